"""Datasets as sources: Parquet tables with an image column, webdataset tar shards, listing files.

A dataset source is named by a prefix on SRC, which every engine passes to ``sources.list_sources``
(so nothing else changes: ids, resume, rejected table and manifest work as for folders):

``parquet:PATH[?image=COLUMN&id=COLUMN]``
    A Parquet file, or a folder (or prefix) of ``*.parquet`` files: the layout of Hugging Face
    datasets and img2dataset. ``image`` names the column of image bytes (default ``image``; a struct
    column with a ``bytes`` field, as Hugging Face's Image feature writes, works too); ``id`` the
    column of ids (default: ``<file stem>/<row number>``). Every other column of the row (captions,
    labels, URLs, sizes: at most ``MAX_COLUMNS``, each value as JSON of at most ``MAX_VALUE_CHARS``
    characters, binary values as their length) goes into the row's metadata as ``dataset``.
``webdataset:PATH``
    A ``.tar`` shard, or a folder of them (img2dataset's layout and others'): one input per sample,
    whose id is its ``__key__`` (the member path up to the first dot of its name), read from the
    sample's image member (``jpg``, ``png``, ``webp``, ...).
``listing:PATH``
    A listing file of URIs: text (one per line), CSV or Parquet (a ``uri`` column, and an optional
    ``id`` column). Ids are the ``id`` column, else the URI without its scheme.

Members are read through their shard, which is indexed once per process (``INDEX_CACHE`` shards):
a Parquet member reads its row group (``ROW_GROUP_CACHE`` kept), a tar member one range of bytes.
Their URIs are ``<shard>::<member>`` (``::row=<n>`` for Parquet rows). Ids must be unique: a second
input with the same id is rejected with the reason, the rest of its shard is archived.
"""

from __future__ import annotations

import csv
import json
import math
import posixpath
import tarfile
import threading
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qs

import pyarrow.parquet as pq

from coldpress.errors import ColdpressError, InputRejected
from coldpress.transforms.sources import DUPLICATE_MARK

KINDS = ("parquet", "webdataset", "listing")
#: Shard indexes (tar members) and decoded Parquet row groups kept per process.
INDEX_CACHE = 8
ROW_GROUP_CACHE = 2
#: Extensions of a webdataset sample's image member, in order of preference.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp", "ppm", "avif", "jp2")
_SEP = "::"
_lock = threading.Lock()
_indexes: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()
_row_groups: OrderedDict[tuple[str, str, int], tuple[int, list[Any], list[dict[str, Any]]]] = OrderedDict()
#: Columns of a Parquet row carried into its archive row's metadata, and the length of each value.
MAX_COLUMNS = 64
MAX_VALUE_CHARS = 2048


class DatasetBytes(bytes):
    """The image bytes of a Parquet row, with ``columns``: its other columns (``metadata_value``s),
    which ``records`` stores in the archive row's metadata under ``dataset``."""

    columns: dict[str, Any]


def metadata_value(value: Any) -> Any:
    """A column value as it goes into the metadata: JSON scalars and small lists/objects as they
    are, binary as ``"<N bytes>"``, anything longer than MAX_VALUE_CHARS as its truncated JSON text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
        value = {k: metadata_value(v) for k, v in value.items()}  # a second Image feature
    text = json.dumps(value, default=lambda v: f"<{len(v)} bytes>" if isinstance(v, (bytes, bytearray)) else str(v),
                      ensure_ascii=False, allow_nan=False) if not isinstance(value, str) else value
    if len(text) > MAX_VALUE_CHARS:
        return text[:MAX_VALUE_CHARS - 1] + "\u2026"
    return json.loads(text) if not isinstance(value, str) else value


def dataset_kind(src: str) -> tuple[str, str, dict[str, str]] | None:
    """(kind, path, options) when ``src`` names a dataset source (``parquet:...``), else None."""
    text = str(src)
    for kind in KINDS:
        if text.startswith(kind + ":") and not text.startswith(kind + "://"):
            path, _, query = text[len(kind) + 1:].partition("?")
            options = {k: v[-1] for k, v in parse_qs(query).items()}
            unknown = set(options) - ({"image", "id"} if kind == "parquet" else set())
            if unknown:
                raise ColdpressError(f"unknown option(s) {', '.join(sorted(unknown))} in the {kind} source {src!r}; "
                                     "parquet sources take ?image=COLUMN&id=COLUMN, the others none")
            return kind, path, options
    return None


def member_uri(uri: str) -> tuple[str, str] | None:
    """(shard URI, member) of a dataset member's URI, else None."""
    shard, sep, member = str(uri).rpartition(_SEP)
    if sep and shard.lower().endswith((".tar", ".parquet")):
        return shard, member
    return None


def _files(fs: Any, root: str, suffix: str) -> list[str]:
    if fs.isfile(root):
        return [root]
    return sorted(p for p in fs.find(root) if p.lower().endswith(suffix)
                  and not any(part.startswith((".", "_")) for part in p[len(root):].split("/") if part))


def list_dataset(src: str, storage_options: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """The (uri, key) pairs of a dataset source, sorted by key; a key seen twice keeps its first
    input and the others get a key that ``record_id`` rejects with the reason."""
    from coldpress.transforms.sources import SourceNotFound, _uri, filesystem_for

    kind, path, options = dataset_kind(src)
    fs, root = filesystem_for(path, storage_options)
    if not fs.exists(root):
        raise SourceNotFound(f"{kind} source {path!r} does not exist or cannot be seen with the given credentials; "
                             "check the path")
    root = root.rstrip("/")
    pairs: list[tuple[str, str]] = []
    if kind == "listing":
        pairs = _listing(fs, root)
    elif kind == "webdataset":
        for shard in _files(fs, root, ".tar"):
            uri = _uri(fs, shard, path)
            for key, member in _tar_samples(fs, shard):
                pairs.append((f"{uri}{_SEP}{member}", key))
    else:
        image, id_column = options.get("image", "image"), options.get("id")
        for shard in _files(fs, root, ".parquet"):
            uri = _uri(fs, shard, path)
            with fs.open(shard, "rb") as f:
                pf = pq.ParquetFile(f)
                if image not in pf.schema_arrow.names:
                    raise ColdpressError(f"{uri} has no column {image!r} (its columns: "
                                         f"{', '.join(pf.schema_arrow.names)}); pass ?image=COLUMN")
                if id_column is not None and id_column not in pf.schema_arrow.names:
                    raise ColdpressError(f"{uri} has no column {id_column!r}; pass ?id=COLUMN naming one of "
                                         f"{', '.join(pf.schema_arrow.names)}")
                stem = posixpath.splitext(posixpath.basename(shard))[0]
                ids = (pf.read(columns=[id_column]).column(id_column).to_pylist() if id_column
                       else [f"{stem}/{i:08d}" for i in range(pf.metadata.num_rows)])
            pairs += [(f"{uri}{_SEP}row={i}&image={image}", str(k)) for i, k in enumerate(ids)]
    return _unique(pairs)


def _unique(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[str] = set()
    out = []
    for uri, key in pairs:
        if key in seen:  # record_id rejects it (a NUL is never in an id), saying why
            key = f"{key}{DUPLICATE_MARK}"
        seen.add(key)
        out.append((uri, key))
    out.sort(key=lambda p: (p[1], p[0]))
    return out


def _listing(fs: Any, path: str) -> list[tuple[str, str]]:
    if path.lower().endswith(".parquet"):
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        rows = table.to_pylist()
    elif path.lower().endswith(".csv"):
        with fs.open(path, "rt", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        with fs.open(path, "rt") as f:
            rows = [{"uri": line.strip()} for line in f if line.strip() and not line.startswith("#")]
    if rows and "uri" not in rows[0]:
        raise ColdpressError(f"the listing {path} has no 'uri' column (it has: {', '.join(rows[0])}); name the "
                             "column of URIs 'uri' (and the ids, if any, 'id')")
    pairs = []
    for row in rows:
        uri = str(row["uri"])
        key = row.get("id") or uri.split("://", 1)[-1]
        pairs.append((uri, str(key)))
    return pairs


def _tar_index(fs: Any, shard: str) -> dict[str, tuple[int, int]]:
    """member name -> (offset of its data, size), read from the tar headers once per process."""
    with _lock:
        if shard in _indexes:
            _indexes.move_to_end(shard)
            return _indexes[shard]
    index = {}
    with fs.open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for info in tar:
            if info.isfile():
                index[info.name] = (info.offset_data, info.size)
    with _lock:
        _indexes[shard] = index
        while len(_indexes) > INDEX_CACHE:
            _indexes.popitem(last=False)
    return index


def _tar_samples(fs: Any, shard: str) -> list[tuple[str, str]]:
    """(``__key__``, image member) per sample of a webdataset shard; a sample without an image
    member gets its first member (the encoder rejects it, with the reason)."""
    samples: dict[str, list[str]] = {}
    for name in _tar_index(fs, shard):
        folder, base = posixpath.split(name)
        if base.startswith("."):
            continue
        key = posixpath.join(folder, base.split(".", 1)[0])
        samples.setdefault(key, []).append(name)
    out = []
    for key, names in samples.items():
        ext = {n.rsplit("/", 1)[-1].split(".", 1)[-1].lower(): n for n in names}
        image = next((ext[e] for e in IMAGE_EXTENSIONS if e in ext), names[0])
        out.append((key, image))
    return out


def read_member(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The bytes of a dataset member (a tar member or a Parquet row's image)."""
    from coldpress.transforms.sources import filesystem_for

    shard_uri, member = member_uri(uri)
    fs, shard = filesystem_for(shard_uri, storage_options)
    if shard.lower().endswith(".tar"):
        index = _tar_index(fs, shard)
        if member not in index:
            raise InputRejected(f"{member!r} is not in the tar shard {shard_uri}; list the dataset again")
        offset, size = index[member]
        return fs.cat_file(shard, start=offset, end=offset + size)
    query = {k: v[-1] for k, v in parse_qs(member).items()}
    if not query.get("row", "").isdigit() or "image" not in query:
        raise InputRejected(f"{uri!r} does not name a row (expected ::row=N&image=COLUMN); list the dataset again")
    return _parquet_value(fs, shard, shard_uri, int(query["row"]), query["image"])


def _parquet_value(fs: Any, shard: str, shard_uri: str, row: int, image: str) -> bytes:
    with fs.open(shard, "rb") as f:
        pf = pq.ParquetFile(f)
        start = 0
        for rg in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            if row < start + n:
                break
            start += n
        else:
            raise InputRejected(f"row {row} is past the end of {shard_uri}; list the dataset again")
        key = (shard_uri, image, rg)
        with _lock:
            cached = _row_groups.get(key)
        if cached is None:
            others = [c for c in pf.schema_arrow.names if c != image][:MAX_COLUMNS]
            table = pf.read_row_group(rg, columns=[image, *others])
            columns = {c: table.column(c).to_pylist() for c in others}
            extras = [{c: metadata_value(columns[c][i]) for c in others} for i in range(table.num_rows)]
            cached = (start, table.column(image).to_pylist(), extras)
            with _lock:
                _row_groups[key] = cached
                while len(_row_groups) > ROW_GROUP_CACHE:
                    _row_groups.popitem(last=False)
    start, values, extras = cached
    value = values[row - start]
    if isinstance(value, dict) and "bytes" in value:  # Hugging Face's Image feature: {bytes, path}
        value = value["bytes"]
    if not isinstance(value, (bytes, bytearray)):
        raise InputRejected(f"row {row} of {shard_uri} holds no image bytes in column {image!r} (it holds "
                            f"{type(value).__name__}); pass the column of encoded image bytes as ?image=COLUMN")
    data = DatasetBytes(value)
    data.columns = extras[row - start]
    return data
