"""Parquet archives: write them atomically, read them back by id with few bytes, describe them.

An archive is a directory, local or on any fsspec filesystem (``s3://bucket/prefix``)::

    part-00000.parquet     data shards (ARCHIVE_SCHEMA), rows sorted by id within each shard
    part-00001.parquet     ... (deterministic names: engines choose the shard indexes)
    rejected.parquet       inputs that could not be archived, with the reason (REJECTED_SCHEMA)
    manifest.json          the run manifest (counts, codec, versions, timings, shard list)

Every file is written under a temporary name starting with '.' in the same directory and moved to
its final name only once complete; readers ignore names starting with '.' or '_', so a crash leaves
at most temporary files behind and never a partial file under a final name. See docs/FORMAT.md.

The archive code never decodes bitstreams: it stores and returns bytes.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as _dt
import importlib.metadata
import json
import os
import posixpath
import re
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from coldpress.errors import ArchiveError
from coldpress.transforms.schema import (
    ARCHIVE_FORMAT,
    ARCHIVE_FORMAT_VERSION,
    ARCHIVE_SCHEMA,
    BITSTREAM_BYTES_KEY,
    REJECTED_FORMAT,
    REJECTED_SCHEMA,
    conform_table,
    format_tag,
    parquet_write_options,
    rejected_to_table,
    row_group_bounds,
    rows_to_table,
    validate_row,
)

MANIFEST_NAME = "manifest.json"
REJECTED_NAME = "rejected.parquet"
DEFAULT_SHARD_PREFIX = "part"
DEFAULT_ROWS_PER_SHARD = 10_000
DEFAULT_BYTES_PER_SHARD = 256 << 20
_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<index>\d+)\.parquet$")

Rows = Iterable[Mapping[str, Any]] | pa.Table | pa.RecordBatch


# --------------------------------------------------------------------------------------------------
# filesystem helpers


def _resolve(dst: Any, storage_options: Mapping[str, Any] | None, filesystem: Any = None) -> tuple[Any, str]:
    """(fsspec filesystem, path on it without trailing slash) for a local path or URL."""
    dst = os.fspath(dst)
    if filesystem is not None:
        root = filesystem._strip_protocol(dst)
    else:
        filesystem, root = fsspec.core.url_to_fs(dst, **dict(storage_options or {}))
    root = root.rstrip("/") or root
    return filesystem, root


def _display(fs: Any, path: str) -> str:
    """A path as the user would write it (with its protocol for remote filesystems)."""
    if isinstance(fs, LocalFileSystem):
        return path
    unstrip = getattr(fs, "unstrip_protocol", None)
    return unstrip(path) if unstrip else path


def _is_local(fs: Any) -> bool:
    return isinstance(fs, LocalFileSystem)


def shard_name(index: int, prefix: str = DEFAULT_SHARD_PREFIX) -> str:
    """The file name of data shard ``index``: ``part-00042.parquet``."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    if not prefix or "/" in prefix or prefix[0] in "._" or f"{prefix}.parquet" == REJECTED_NAME:
        raise ValueError(
            f"shard prefix {prefix!r} is not usable: it must be non-empty, contain no '/', not start "
            "with '.' or '_' (readers ignore such names) and not be 'rejected'"
        )
    return f"{prefix}-{index:05d}.parquet"


def _is_shard_name(name: str) -> bool:
    return name.endswith(".parquet") and name[0] not in "._" and name != REJECTED_NAME


def _shard_sort_key(name: str) -> tuple[str, int, str]:
    m = _SHARD_RE.match(name)
    return (m["prefix"], int(m["index"]), name) if m else (name, -1, name)


def _list_dir(fs: Any, root: str) -> list[dict[str, Any]] | None:
    """Entries of directory ``root`` (fresh, not from a listing cache), or None when it does not exist."""
    try:
        fs.invalidate_cache(root)
    except Exception:  # noqa: BLE001 - a filesystem without a cache
        pass
    try:
        entries = fs.ls(root, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not entries and not fs.exists(root):
        return None
    if len(entries) == 1 and entries[0].get("type") == "file" and entries[0]["name"].rstrip("/") == root:
        raise ArchiveError(
            f"{_display(fs, root)} is a file, not an archive directory: pass the directory that holds "
            f"{MANIFEST_NAME} and the part-*.parquet shards"
        )
    return entries


@dataclass(frozen=True)
class _Entry:
    name: str
    path: str
    size: int


def _shard_entries(fs: Any, root: str, entries: list[dict[str, Any]]) -> list[_Entry]:
    shards = []
    for e in entries:
        if e.get("type") != "file":
            continue
        name = posixpath.basename(e["name"].rstrip("/"))
        if _is_shard_name(name):
            shards.append(_Entry(name, f"{root}/{name}", int(e.get("size") or 0)))
    return sorted(shards, key=lambda s: _shard_sort_key(s.name))


def _open_read(fs: Any, path: str, size: int | None = None) -> BinaryIO:
    """A file opened for random access without read-ahead: remote reads fetch only what pyarrow asks."""
    kwargs: dict[str, Any] = {"cache_type": "none"}
    if size and not _is_local(fs):
        kwargs["size"] = size
    return fs.open(path, "rb", **kwargs)


def _atomic_write(fs: Any, root: str, name: str, write: Callable[[BinaryIO], None]) -> int:
    """Write ``root/name`` through a temporary '.name.tmp-<uuid>' file in the same directory, then
    move it to its final name. Returns the number of bytes written."""
    final = f"{root}/{name}"
    tmp = f"{root}/.{name}.tmp-{uuid.uuid4().hex}"
    try:
        if _is_local(fs):
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                size = f.tell()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(root)
        else:
            with fs.open(tmp, "wb") as f:
                write(f)
                size = f.tell()
            fs.mv(tmp, final)  # S3: copy then delete; the final key appears complete or not at all
    except BaseException:
        try:
            if fs.exists(tmp):
                fs.rm(tmp)
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        raise
    return size


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exists(fs: Any, path: str) -> bool:
    """Whether ``path`` exists now (not according to a listing cache)."""
    try:
        fs.invalidate_cache(path)
    except Exception:  # noqa: BLE001 - a filesystem without a cache
        pass
    return fs.exists(path)


def _makedirs(fs: Any, root: str) -> None:
    try:
        fs.makedirs(root, exist_ok=True)
    except FileExistsError:
        pass


def _corrupt(fs: Any, path: str, exc: BaseException) -> ArchiveError:
    return ArchiveError(
        f"{_display(fs, path)} cannot be read as Parquet ({type(exc).__name__}: {exc}). The file is "
        "probably truncated (an interrupted copy or upload) or corrupted. Restore it from a good copy; "
        "or delete it and re-run the job with resume, which encodes the inputs it held again."
    )


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _coldpress_version() -> str:
    try:
        return importlib.metadata.version("coldpress")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------------
# writing


def _table(rows: Rows, schema: pa.Schema) -> pa.Table:
    if isinstance(rows, (pa.Table, pa.RecordBatch)):
        return conform_table(rows, schema)
    return rows_to_table(rows) if schema is ARCHIVE_SCHEMA else rejected_to_table(rows)


def _write_parquet(table: pa.Table, bounds: list[tuple[int, int]]) -> Callable[[BinaryIO], None]:
    options = parquet_write_options(table.schema)
    options.pop("row_group_size")

    def write(f: BinaryIO) -> None:
        with pq.ParquetWriter(f, table.schema, **options) as writer:
            for offset, length in bounds:
                writer.write_table(table.slice(offset, length), row_group_size=length)

    return write


def write_shard(
    dst: Any,
    index: int,
    rows: Rows,
    storage_options: Mapping[str, Any] | None = None,
    *,
    prefix: str = DEFAULT_SHARD_PREFIX,
    overwrite: bool = False,
    filesystem: Any = None,
) -> dict[str, Any]:
    """Write data shard ``index`` of archive ``dst`` atomically and describe it.

    ``rows`` are archive rows (dicts) or an Arrow table/batch with the archive columns; they are
    sorted by id. Returns ``{"name", "rows", "bytes", "bitstream_bytes", "min_id", "max_id"}``.
    Refuses to replace an existing shard unless ``overwrite`` (a retried task rewriting the same
    rows); use ``next_shard_index(dst)`` to append to an archive.
    """
    name = shard_name(index, prefix)
    table = _table(rows, ARCHIVE_SCHEMA)
    fs, root = _resolve(dst, storage_options, filesystem)
    _makedirs(fs, root)
    final = f"{root}/{name}"
    if not overwrite:
        if _exists(fs, final):
            raise ArchiveError(
                f"shard {_display(fs, final)} already exists; write the new rows under a new index "
                "(next_shard_index(dst) gives the first free one), or pass overwrite=True when "
                "rewriting the same rows (a retried task)"
            )
    bitstream_bytes = pc.sum(pc.binary_length(table.column("bitstream"))).as_py() or 0
    metadata = dict(ARCHIVE_SCHEMA.metadata)
    metadata[BITSTREAM_BYTES_KEY] = str(bitstream_bytes).encode()
    table = table.replace_schema_metadata(metadata)
    size = _atomic_write(fs, root, name, _write_parquet(table, row_group_bounds(table)))
    ids = table.column("id")
    return {
        "name": name,
        "rows": table.num_rows,
        "bytes": size,
        "bitstream_bytes": bitstream_bytes,
        "min_id": ids[0].as_py() if table.num_rows else None,
        "max_id": ids[-1].as_py() if table.num_rows else None,
    }


def write_rejected(
    dst: Any, rows: Rows, storage_options: Mapping[str, Any] | None = None, *, filesystem: Any = None
) -> dict[str, Any]:
    """Write (replace) the rejected table of archive ``dst`` atomically; ``rows`` may be empty.
    Returns ``{"name", "rows", "bytes"}``."""
    table = _table(rows, REJECTED_SCHEMA)
    fs, root = _resolve(dst, storage_options, filesystem)
    _makedirs(fs, root)
    bounds = [(0, table.num_rows)] if table.num_rows else []
    size = _atomic_write(fs, root, REJECTED_NAME, _write_parquet(table, bounds))
    return {"name": REJECTED_NAME, "rows": table.num_rows, "bytes": size}


def write_manifest(
    dst: Any, manifest: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None, *, filesystem: Any = None
) -> None:
    """Write (replace) ``manifest.json`` of archive ``dst`` atomically."""
    data = (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode()
    fs, root = _resolve(dst, storage_options, filesystem)
    _makedirs(fs, root)
    _atomic_write(fs, root, MANIFEST_NAME, lambda f: f.write(data))


def _read_manifest(fs: Any, root: str) -> dict[str, Any] | None:
    path = f"{root}/{MANIFEST_NAME}"
    try:
        with fs.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(raw)
        if not isinstance(manifest, dict):
            raise ValueError("the top level is not a JSON object")
    except ValueError as exc:
        raise ArchiveError(
            f"{_display(fs, path)} is not a valid coldpress manifest ({exc}); the data shards are "
            "unaffected: delete the manifest, and the next run on this archive writes a new one"
        ) from exc
    return manifest


def read_manifest(dst: Any, storage_options: Mapping[str, Any] | None = None, *, filesystem: Any = None) -> dict | None:
    """The manifest of archive ``dst``, or None when it has none (a run that has not finished)."""
    fs, root = _resolve(dst, storage_options, filesystem)
    return _read_manifest(fs, root)


def next_shard_index(
    dst: Any,
    storage_options: Mapping[str, Any] | None = None,
    *,
    prefix: str = DEFAULT_SHARD_PREFIX,
    filesystem: Any = None,
) -> int:
    """The first shard index after every ``prefix-NNNNN.parquet`` in ``dst`` (0 for a new archive)."""
    fs, root = _resolve(dst, storage_options, filesystem)
    entries = _list_dir(fs, root)
    last = -1
    for shard in _shard_entries(fs, root, entries or []):
        m = _SHARD_RE.match(shard.name)
        if m and m["prefix"] == prefix:
            last = max(last, int(m["index"]))
    return last + 1


class ArchiveWriter:
    """Writes an archive: buffers rows into shards, then the rejected table and the manifest.

    Use as a context manager::

        with ArchiveWriter("s3://bucket/archive", storage_options) as writer:
            for row in rows:
                writer.add(row)            # or writer.add_rejected({...})
            manifest = writer.close({"engine": "local", "codec": ..., ...})

    Shard indexes continue after the shards already in ``dst``, so a resumed run appends new shards
    without rewriting old ones (skip inputs in ``existing_ids(dst)``). The rejected table is merged:
    earlier rejections stay unless the id was archived or rejected again in this run.

    A shard is written when it reaches ``rows_per_shard`` rows or ``bytes_per_shard`` bitstream
    bytes. If the block exits with an exception, buffered rows are still written and the manifest
    says ``"complete": false``.
    """

    def __init__(
        self,
        dst: Any,
        storage_options: Mapping[str, Any] | None = None,
        shard_prefix: str = DEFAULT_SHARD_PREFIX,
        rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
        *,
        bytes_per_shard: int = DEFAULT_BYTES_PER_SHARD,
        filesystem: Any = None,
    ) -> None:
        if rows_per_shard < 1 or bytes_per_shard < 1:
            raise ValueError("rows_per_shard and bytes_per_shard must be positive")
        shard_name(0, shard_prefix)  # validates the prefix
        self._fs, self._root = _resolve(dst, storage_options, filesystem)
        self.path = _display(self._fs, self._root)
        self._prefix = shard_prefix
        self._rows_per_shard = rows_per_shard
        self._bytes_per_shard = bytes_per_shard
        _makedirs(self._fs, self._root)
        self._previous = _read_manifest(self._fs, self._root)
        self._next_index = next_shard_index(self._root, prefix=shard_prefix, filesystem=self._fs)
        self._lock = threading.RLock()
        self._pending: list[Mapping[str, Any]] = []
        self._pending_bytes = 0
        self._ids: set[str] = set()  # archived (written or pending) in this run
        self._rejected: dict[str, Mapping[str, Any]] = {}
        self._written: list[dict[str, Any]] = []
        self.started_at = _now()
        self._manifest: dict[str, Any] | None = None

    # -- rows
    def add(self, row: Mapping[str, Any]) -> None:
        """Buffer one archive row (validated now); writes a shard when the buffer is full."""
        validate_row(row)  # raises ValueError naming the field of a malformed row
        row_id = row["id"]
        with self._lock:
            self._check_open()
            if row_id in self._ids:
                raise ValueError(f"id {row_id!r} was already added to this archive in this run; add each input once")
            self._ids.add(row_id)
            self._rejected.pop(row_id, None)
            self._pending.append(row)
            self._pending_bytes += len(row["bitstream"])
            if len(self._pending) >= self._rows_per_shard or self._pending_bytes >= self._bytes_per_shard:
                self.flush()

    def add_rejected(self, row: Mapping[str, Any]) -> None:
        """Record one rejected input (id, source_uri, reason, created_at)."""
        validate_row(row, rejected=True)
        with self._lock:
            self._check_open()
            if row["id"] in self._ids:
                raise ValueError(f"id {row['id']!r} was archived in this run; it cannot also be rejected")
            self._rejected[row["id"]] = row

    def flush(self) -> dict[str, Any] | None:
        """Write the buffered rows as the next shard now; returns its description (None if empty)."""
        with self._lock:
            if not self._pending:
                return None
            info = write_shard(self._root, self._next_index, self._pending, prefix=self._prefix, filesystem=self._fs)
            self._next_index += 1
            self._written.append(info)
            self._pending = []
            self._pending_bytes = 0
            return info

    def adopt_shard(self, info: Mapping[str, Any], ids: Iterable[str]) -> None:
        """Count a shard that another process wrote into this archive during this run.

        Distributed engines write shards in their workers with ``write_shard`` (under indexes from
        ``next_shard_index``) and hand what it returned, with the shard's ids, to the driver's
        writer: the manifest then lists the shard as written by this run, and its ids leave the
        rejected table like rows added here. Raises ValueError for an id already counted in this run.
        """
        ids = list(ids)
        with self._lock:
            self._check_open()
            repeated = self._ids.intersection(ids)
            if repeated or len(set(ids)) != len(ids):
                shown = ", ".join(map(repr, sorted(repeated)[:5])) or "one of its ids twice"
                raise ValueError(
                    f"shard {info.get('name')!r} repeats {shown} already archived in this run; each input "
                    "must be written once (a retried task must rewrite its shard under the same name)"
                )
            self._ids.update(ids)
            for rid in ids:
                self._rejected.pop(rid, None)
            self._written.append(dict(info))
            m = _SHARD_RE.match(str(info.get("name", "")))
            if m and m["prefix"] == self._prefix:
                self._next_index = max(self._next_index, int(m["index"]) + 1)

    @property
    def archived(self) -> int:
        """Rows added in this run (written or buffered)."""
        return len(self._ids)

    @property
    def rejected(self) -> int:
        """Inputs rejected in this run."""
        return len(self._rejected)

    @property
    def shards_written(self) -> list[dict[str, Any]]:
        return list(self._written)

    def _check_open(self) -> None:
        if self._manifest is not None:
            raise ArchiveError(f"the writer of {self.path} is closed; open a new ArchiveWriter to add rows")

    # -- finishing
    def close(self, manifest_extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write the last shard, the rejected table and the manifest; return the manifest.

        ``manifest_extra`` holds what the engine knows: engine, src, codec, model_id, weights_hash,
        target_bpp, torch_version, device_class, inputs_seen, skipped, started_at, finished_at...
        """
        return self._finish(manifest_extra or {}, complete=True)

    def _finish(self, extra: Mapping[str, Any], complete: bool) -> dict[str, Any]:
        with self._lock:
            if self._manifest is not None:
                return self._manifest
            self.flush()
            rejected_info = self._write_rejected()
            manifest = self._build_manifest(extra, complete, rejected_info)
            write_manifest(self._root, manifest, filesystem=self._fs)
            self._manifest = manifest
            return manifest

    def _write_rejected(self) -> dict[str, Any]:
        table = rejected_to_table(self._rejected.values())
        path = f"{self._root}/{REJECTED_NAME}"
        if _exists(self._fs, path):
            old = _read_rejected_file(self._fs, path)
            drop = pa.array(sorted(self._ids | set(self._rejected)), type=pa.string())
            keep = old.filter(pc.invert(pc.is_in(old.column("id"), value_set=drop)))
            if keep.num_rows:
                table = pa.concat_tables([table, keep.cast(REJECTED_SCHEMA)])
        return write_rejected(self._root, table, filesystem=self._fs)

    def _build_manifest(self, extra: Mapping[str, Any], complete: bool, rejected_info: dict) -> dict[str, Any]:
        fs, root = self._fs, self._root
        known = {s["name"]: s for s in (self._previous or {}).get("shards", []) if isinstance(s, dict) and "name" in s}
        known.update({s["name"]: s for s in self._written})
        shards = []
        written = {s["name"] for s in self._written}
        for entry in _shard_entries(fs, root, _list_dir(fs, root) or []):
            info = known.get(entry.name)
            if entry.name not in written:
                info = _manifest_entry(info, entry)
            if info is None:  # e.g. written by a run that crashed before its manifest
                info = _describe_shard(fs, entry)
            shards.append(info)
        finished = _now()
        run: dict[str, Any] = {
            "started_at": self.started_at.isoformat(),
            "finished_at": finished.isoformat(),
            "inputs_seen": self.archived + self.rejected,
        }
        run.update(extra)
        run.update(
            {
                "complete": complete,
                "archived": self.archived,
                "rejected": self.rejected,
                "shards_written": [s["name"] for s in self._written],
                "coldpress_version": extra.get("coldpress_version") or _coldpress_version(),
                "pyarrow_version": pa.__version__,
            }
        )
        if "torch_version" not in run and "torch" in sys.modules:
            run["torch_version"] = getattr(sys.modules["torch"], "__version__", None)
        runs = [r for r in (self._previous or {}).get("runs", []) if isinstance(r, dict)]
        manifest = dict(run)
        manifest.update(
            {
                "format": ARCHIVE_FORMAT,
                "format_version": ARCHIVE_FORMAT_VERSION,
                "num_rows": sum(s["rows"] for s in shards),
                "num_rejected": rejected_info["rows"],
                "shards": shards,
                "rejected_table": rejected_info,
                "runs": runs + [run],
            }
        )
        return manifest

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._manifest is not None:
            return False
        if exc_type is None:
            self.close()
        else:
            try:
                self._finish({"error": f"{exc_type.__name__}: {exc}"}, complete=False)
            except Exception as cleanup_exc:  # noqa: BLE001 - keep the original error
                if exc is not None:
                    exc.add_note(f"coldpress could not save the buffered rows of {self.path}: {cleanup_exc}")
        return False


# --------------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class Shard:
    """One data shard of an archive."""

    name: str
    path: str  # as the user would write it (with its protocol for remote archives)
    num_rows: int
    num_bytes: int
    bitstream_bytes: int | None  # None for a shard written without coldpress' write_shard
    min_id: str | None
    max_id: str | None


def _check_format(fs: Any, path: str, schema_metadata: Mapping[bytes, bytes] | None, names: list[str], expected: str) -> None:
    found = format_tag(schema_metadata)
    kind, _, version = expected.partition("/")
    where = _display(fs, path)
    if found is None or not found.startswith(kind + "/"):
        raise ArchiveError(
            f"{where} is a Parquet file but not a coldpress {kind} file (its schema metadata has "
            f"coldpress.format={found!r}, expected {expected!r}). Point to a directory written by "
            "coldpress, or move foreign .parquet files out of it."
        )
    if found != expected:
        raise ArchiveError(
            f"{where} is in coldpress format {found!r}, which this coldpress ({_coldpress_version()}) "
            f"cannot read (it reads {expected!r}); upgrade coldpress"
        )
    schema = REJECTED_SCHEMA if kind == "rejected" else ARCHIVE_SCHEMA
    missing = [n for n in schema.names if n not in names]
    if missing:
        raise ArchiveError(
            f"{where} claims coldpress format {found!r} but lacks column(s) {', '.join(missing)}; "
            "it was not written by coldpress: remove it from the archive directory"
        )


def _read_footer(fs: Any, entry: _Entry) -> pq.FileMetaData:
    try:
        with _open_read(fs, entry.path, entry.size) as f:
            metadata = pq.ParquetFile(f).metadata
    except (pa.ArrowException, OSError, ValueError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise ArchiveError(
                f"{_display(fs, entry.path)} disappeared while the archive was being opened; "
                "is a job writing or cleaning this archive? Retry when it is done"
            ) from exc
        raise _corrupt(fs, entry.path, exc) from exc
    _check_format(fs, entry.path, metadata.metadata, metadata.schema.names, ARCHIVE_FORMAT)
    return metadata


def _describe_shard(fs: Any, entry: _Entry, metadata: pq.FileMetaData | None = None) -> dict[str, Any]:
    metadata = metadata or _read_footer(fs, entry)
    raw = (metadata.metadata or {}).get(BITSTREAM_BYTES_KEY)
    id_index = metadata.schema.names.index("id")
    mins, maxs = [], []
    for rg in range(metadata.num_row_groups):
        stats = metadata.row_group(rg).column(id_index).statistics
        if stats is not None and stats.has_min_max:
            mins.append(stats.min)
            maxs.append(stats.max)
    return {
        "name": entry.name,
        "rows": metadata.num_rows,
        "bytes": entry.size,
        "bitstream_bytes": int(raw) if raw is not None else None,
        "min_id": min(mins) if mins else None,
        "max_id": max(maxs) if maxs else None,
    }


def _read_rejected_file(fs: Any, path: str) -> pa.Table:
    try:
        with _open_read(fs, path) as f:
            pf = pq.ParquetFile(f, page_checksum_verification=True)
            _check_format(fs, path, pf.metadata.metadata, pf.metadata.schema.names, REJECTED_FORMAT)
            return pf.read()
    except (pa.ArrowException, OSError, EOFError) as exc:
        raise _corrupt(fs, path, exc) from exc


def _in_range(wanted: list[str], lo: str | None, hi: str | None) -> bool:
    """Whether one of ``wanted`` (sorted) lies in [lo, hi]; True when a bound is unknown."""
    if lo is None or hi is None:
        return True
    pos = bisect.bisect_left(wanted, lo)
    return pos < len(wanted) and wanted[pos] <= hi


def _ids_may_be_in(stats: Any, wanted: list[str]) -> bool:
    """Whether a row group with these id statistics can hold one of ``wanted`` (sorted)."""
    if stats is None or not stats.has_min_max:
        return True
    lo, hi = stats.min, stats.max
    if isinstance(lo, bytes):
        lo, hi = lo.decode("utf-8", "replace"), hi.decode("utf-8", "replace")
    return _in_range(wanted, lo, hi)


def _manifest_entry(info: Any, entry: _Entry) -> dict[str, Any] | None:
    """The manifest's description of ``entry`` when it still describes the file on storage (same
    name and size), else None (the footer must be read)."""
    if not isinstance(info, dict) or info.get("bytes") != entry.size or not isinstance(info.get("rows"), int):
        return None
    if not all(k in info for k in ("bitstream_bytes", "min_id", "max_id")):
        return None
    return info


class Archive:
    """A coldpress archive opened for reading (see ``open_archive``).

    Shard footers are read lazily: a shard the manifest describes (same name and size on storage)
    is only opened when a read needs it, so restoring one id from an archive of many shards reads
    one footer and one row group.
    """

    def __init__(self, fs: Any, root: str, entries: list[_Entry], manifest: dict[str, Any] | None,
                 has_rejected: bool) -> None:
        self._fs = fs
        self._root = root
        self.path = _display(fs, root)
        self._entries = entries
        self.manifest = manifest
        self._has_rejected = has_rejected
        self._lock = threading.Lock()
        known = {}
        for info in (manifest or {}).get("shards", []):
            if isinstance(info, dict) and isinstance(info.get("name"), str):
                known[info["name"]] = info
        infos: list[dict[str, Any] | None] = [_manifest_entry(known.get(e.name), e) for e in entries]
        self._footers: list[pq.FileMetaData | None] = [None] * len(entries)
        unknown = [i for i, info in enumerate(infos) if info is None]
        for i, md in zip(unknown, _footers(fs, [entries[i] for i in unknown])):
            self._footers[i] = md
            infos[i] = _describe_shard(fs, entries[i], md)
        self.shards = [
            Shard(
                name=e.name,
                path=_display(fs, e.path),
                num_rows=info["rows"],
                num_bytes=e.size,
                bitstream_bytes=info["bitstream_bytes"],
                min_id=info["min_id"],
                max_id=info["max_id"],
            )
            for e, info in zip(entries, infos)
        ]

    def _footer(self, i: int) -> pq.FileMetaData:
        """The footer of shard ``i`` (read once); its description then replaces the manifest's."""
        md = self._footers[i]
        if md is None:
            md = _read_footer(self._fs, self._entries[i])
            info = _describe_shard(self._fs, self._entries[i], md)
            with self._lock:
                self._footers[i] = md
                self.shards[i] = dataclasses.replace(
                    self.shards[i], num_rows=info["rows"], bitstream_bytes=info["bitstream_bytes"],
                    min_id=info["min_id"], max_id=info["max_id"],
                )
        return md

    @property
    def num_rows(self) -> int:
        return sum(s.num_rows for s in self.shards)

    @property
    def schema(self) -> pa.Schema:
        return ARCHIVE_SCHEMA

    def __repr__(self) -> str:
        return f"Archive({self.path!r}, shards={len(self.shards)}, rows={self.num_rows})"

    def _columns(self, columns: Iterable[str] | None) -> list[str] | None:
        if columns is None:
            return None
        columns = list(columns)
        unknown = [c for c in columns if c not in ARCHIVE_SCHEMA.names]
        if unknown:
            raise ValueError(
                f"unknown column(s) {', '.join(unknown)}; archive columns are: {', '.join(ARCHIVE_SCHEMA.names)}"
            )
        return columns

    def _parquet_file(self, i: int, f: BinaryIO) -> pq.ParquetFile:
        return pq.ParquetFile(f, metadata=self._footer(i), pre_buffer=True, page_checksum_verification=True)

    def _empty(self, columns: list[str] | None) -> pa.Table:
        table = ARCHIVE_SCHEMA.empty_table().replace_schema_metadata(None)
        return table.select(columns) if columns is not None else table

    def read(self, ids: Iterable[str] | None = None, columns: Iterable[str] | None = None,
             *, missing: str = "error") -> pa.Table:
        """Rows of the archive as a table (sorted by id within each shard).

        With ``ids``, reads only the row groups whose id statistics can hold them and returns one
        row per found id, sorted by id; ids not in the archive raise ArchiveError listing them
        (``missing="ignore"`` returns the rows found). ``columns`` limits the columns read.
        """
        if missing not in ("error", "ignore"):
            raise ValueError(f"missing must be 'error' or 'ignore', not {missing!r}")
        columns = self._columns(columns)
        if ids is None:
            tables = [self._read_shard(i, None, columns) for i in range(len(self._entries))]
            return pa.concat_tables(tables) if tables else self._empty(columns)
        if isinstance(ids, str):
            raise TypeError("ids must be a list of ids, not a single string")
        wanted = sorted(set(ids))
        read_columns = None if columns is None else (columns if "id" in columns else ["id", *columns])
        tables = []
        trusted_skips = []  # shards skipped on the manifest's id range alone, without their footer
        for i, shard in enumerate(self.shards):
            if not wanted or not shard.num_rows:
                continue
            if not _in_range(wanted, shard.min_id, shard.max_id):
                if self._footers[i] is None:
                    trusted_skips.append(i)
                continue
            table = self._find(i, wanted, read_columns)
            if table is not None:
                tables.append(table)
        if trusted_skips:
            found = set().union(*(t.column("id").to_pylist() for t in tables)) if tables else set()
            absent = [i for i in wanted if i not in found]
            # Before saying an id is missing, check the skipped shards' own footers: the manifest
            # may describe an older file of the same name and size.
            for i in trusted_skips if absent else []:
                table = self._find(i, absent, read_columns)
                if table is not None:
                    tables.append(table)
        table = pa.concat_tables(tables) if tables else self._empty(read_columns)
        table = table.sort_by("id")
        found = table.column("id").to_pylist()
        keep = [i for i, v in enumerate(found) if i == 0 or v != found[i - 1]]  # one row per id
        if len(keep) != len(found):
            table = table.take(pa.array(keep, type=pa.int64()))
        absent = sorted(set(wanted) - set(found))
        if absent and missing == "error":
            shown = ", ".join(map(repr, absent[:20])) + (f" and {len(absent) - 20} more" if len(absent) > 20 else "")
            raise ArchiveError(
                f"{len(absent)} of {len(wanted)} requested id(s) are not in the archive at {self.path}: "
                f"{shown}. Ids are source keys relative to the source root (e.g. 'sub/kodim01.png'); check "
                "the spelling, whether the input was rejected (see the rejected table), or list the "
                "archive's ids with `coldpress inspect`."
            )
        return table.select(columns) if columns is not None else table

    def _find(self, i: int, wanted: list[str], columns: list[str] | None) -> pa.Table | None:
        """Rows of shard ``i`` whose id is in ``wanted`` (sorted), reading only the row groups whose
        id statistics can hold them; None when there are none."""
        md = self._footer(i)
        id_index = md.schema.names.index("id")
        groups = [rg for rg in range(md.num_row_groups) if _ids_may_be_in(md.row_group(rg).column(id_index).statistics, wanted)]
        if not groups:
            return None
        table = self._read_shard(i, groups, columns)
        table = table.filter(pc.is_in(table.column("id"), value_set=pa.array(wanted, type=pa.string())))
        return table if table.num_rows else None

    def _read_shard(self, i: int, row_groups: list[int] | None, columns: list[str] | None) -> pa.Table:
        entry = self._entries[i]
        try:
            with _open_read(self._fs, entry.path, entry.size) as f:
                pf = self._parquet_file(i, f)
                if row_groups is None:
                    table = pf.read(columns=columns)
                else:
                    table = pf.read_row_groups(row_groups, columns=columns)
        except (pa.ArrowException, OSError, EOFError) as exc:
            raise _corrupt(self._fs, entry.path, exc) from exc
        return table.replace_schema_metadata(None)

    def iter_batches(self, columns: Iterable[str] | None = None, batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
        """Every row, shard after shard, as record batches of at most ``batch_size`` rows."""
        columns = self._columns(columns)
        for i, entry in enumerate(self._entries):
            try:
                with _open_read(self._fs, entry.path, entry.size) as f:
                    pf = self._parquet_file(i, f)
                    for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
                        yield batch.replace_schema_metadata(None)
            except (pa.ArrowException, OSError, EOFError) as exc:
                raise _corrupt(self._fs, entry.path, exc) from exc

    def rejected(self) -> pa.Table:
        """The rejected table (empty with REJECTED_SCHEMA when there is none)."""
        if not self._has_rejected:
            return REJECTED_SCHEMA.empty_table()
        return _read_rejected_file(self._fs, f"{self._root}/{REJECTED_NAME}").replace_schema_metadata(None)


def _footers(fs: Any, entries: list[_Entry]) -> list[pq.FileMetaData]:
    if len(entries) <= 1 or _is_local(fs):
        return [_read_footer(fs, e) for e in entries]
    with ThreadPoolExecutor(max_workers=min(16, len(entries))) as pool:
        return list(pool.map(lambda e: _read_footer(fs, e), entries))


def open_archive(path: Any, storage_options: Mapping[str, Any] | None = None, *, filesystem: Any = None) -> Archive:
    """Open the archive at ``path`` (local directory or fsspec URL) for reading.

    Reads the listing, the manifest, and the footer (a few KiB) of every shard the manifest does
    not describe, checking that they are coldpress files. Raises ArchiveError for a missing path, a directory that is not a
    coldpress archive, a foreign or newer-format file, or a truncated/corrupt shard.
    """
    fs, root = _resolve(path, storage_options, filesystem)
    entries = _list_dir(fs, root)
    if entries is None:
        raise ArchiveError(
            f"no archive at {_display(fs, root)}: the path does not exist. Check the path"
            + ("" if _is_local(fs) else ", the storage options and the credentials")
            + " (it is the directory a coldpress job wrote, holding manifest.json and part-*.parquet)"
        )
    shards = _shard_entries(fs, root, entries)
    names = {posixpath.basename(e["name"].rstrip("/")) for e in entries}
    manifest = _read_manifest(fs, root) if MANIFEST_NAME in names else None
    has_rejected = REJECTED_NAME in names
    if not shards and manifest is None and not has_rejected:
        raise ArchiveError(
            f"{_display(fs, root)} is not a coldpress archive: it holds no part-*.parquet shards, no "
            f"{MANIFEST_NAME} and no {REJECTED_NAME}. Point to the directory a coldpress job wrote."
        )
    if manifest is not None and manifest.get("format") != ARCHIVE_FORMAT:
        found = manifest.get("format")
        if isinstance(found, str) and found.startswith("archive/"):
            raise ArchiveError(
                f"{_display(fs, root)} is a coldpress archive in format {found!r}, which this coldpress "
                f"({_coldpress_version()}) cannot read (it reads {ARCHIVE_FORMAT!r}); upgrade coldpress"
            )
        raise ArchiveError(
            f"{_display(fs, f'{root}/{MANIFEST_NAME}')} is not a coldpress manifest (format={found!r}); "
            "point to a directory written by coldpress, or delete that file if it is a stray"
        )
    return Archive(fs, root, shards, manifest, has_rejected)


def existing_ids(dst: Any, storage_options: Mapping[str, Any] | None = None, *, filesystem: Any = None) -> set[str]:
    """Ids already archived in ``dst`` (reads only the id column); empty for a new archive.

    Resume: skip inputs whose id is in this set, then append with ArchiveWriter.
    """
    fs, root = _resolve(dst, storage_options, filesystem)
    entries = _list_dir(fs, root)
    if entries is None:
        return set()
    shards = _shard_entries(fs, root, entries)
    if not shards:
        return set()
    archive = Archive(fs, root, shards, None, False)
    ids: set[str] = set()
    for i in range(len(shards)):
        ids.update(archive._read_shard(i, None, ["id"]).column("id").to_pylist())
    return ids


def _summary(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    values.sort()
    n = len(values)
    median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return {"min": values[0], "median": median, "mean": sum(values) / n, "max": values[-1]}


def archive_stats(path: Any, storage_options: Mapping[str, Any] | None = None, *, filesystem: Any = None) -> dict[str, Any]:
    """What ``coldpress inspect`` shows: counts, sizes, bpp/PSNR distribution, codecs, rejections.

    Reads footers and a few small columns; never the bitstreams (unless a shard lacks the
    bitstream byte count that write_shard stores in its metadata).
    """
    archive = open_archive(path, storage_options, filesystem=filesystem)
    columns = ["codec", "model_id", "target_bpp", "achieved_bpp", "psnr"]
    codecs: Counter[str] = Counter()
    models: Counter[str] = Counter()
    targets: Counter[float] = Counter()
    bpp: list[float] = []
    psnr: list[float] = []
    for batch in archive.iter_batches(columns=columns, batch_size=65536):
        codecs.update(batch.column("codec").to_pylist())
        models.update(m for m in batch.column("model_id").to_pylist() if m)
        targets.update(batch.column("target_bpp").to_pylist())
        bpp.extend(batch.column("achieved_bpp").to_pylist())
        psnr.extend(batch.column("psnr").to_pylist())
    bitstream_bytes = 0
    for i, shard in enumerate(archive.shards):
        if shard.bitstream_bytes is not None:
            bitstream_bytes += shard.bitstream_bytes
        else:
            lengths = pc.binary_length(archive._read_shard(i, None, ["bitstream"]).column("bitstream"))
            bitstream_bytes += pc.sum(lengths).as_py() or 0
    shard_bytes = sum(s.num_bytes for s in archive.shards)
    fs, root = archive._fs, archive._root
    other_bytes = 0
    for name in (REJECTED_NAME, MANIFEST_NAME):
        try:
            other_bytes += fs.size(f"{root}/{name}")
        except FileNotFoundError:
            pass
    rejected = archive.rejected()
    reasons = Counter(rejected.column("reason").to_pylist())
    n = archive.num_rows
    return {
        "path": archive.path,
        "num_shards": len(archive.shards),
        "num_rows": n,
        "num_rejected": rejected.num_rows,
        "rejected_reasons": dict(reasons.most_common()),
        "bitstream_bytes": bitstream_bytes,
        "shard_bytes": shard_bytes,
        "file_bytes": shard_bytes + other_bytes,
        "overhead_bytes_per_row": (shard_bytes - bitstream_bytes) / n if n else None,
        "bpp": _summary(bpp),
        "psnr": _summary(psnr),
        "target_bpp": dict(sorted(targets.items())),
        "codecs": dict(codecs.most_common()),
        "model_ids": dict(models.most_common()),
        "complete": (archive.manifest or {}).get("complete"),
        "manifest": archive.manifest is not None,
    }
