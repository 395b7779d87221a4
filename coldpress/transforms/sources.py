"""Source listing and reading on local disk or any fsspec filesystem (s3://, gs://, memory://, ...).

A *source key* is the path of a file relative to the SRC the user named, with forward slashes; the
archive id of a record is the normalized key (:func:`record_id`), so re-running a job on the same tree
gives the same ids wherever the tree lives.

Requests to S3 are retried by botocore's own retry modes (``adaptive`` by default, 10 attempts; set
``AWS_RETRY_MODE`` / ``AWS_MAX_ATTEMPTS`` or pass ``config_kwargs={"retries": ...}``), not by a loop of
coldpress's. S3-compatible stores (MinIO, Ceph, moto, ...) are reached by passing
``storage_options={"client_kwargs": {"endpoint_url": URL}}`` or by setting the environment variable
``COLDPRESS_S3_ENDPOINT_URL`` (or the AWS SDK's ``AWS_ENDPOINT_URL``); credentials come from the usual
AWS chain (environment, profile, instance role) and are never logged.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from coldpress.transforms import retries
from coldpress.errors import ColdpressError, InputRejected

#: Environment variables naming the endpoint of an S3-compatible store, first match wins.
S3_ENDPOINT_ENV_VARS = ("COLDPRESS_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")
#: Sources read ahead of their consumer by ``read_ahead``, and threads reading them.
READ_AHEAD = 8
READ_THREADS = 4
_S3_PROTOCOLS = ("s3", "s3a")
#: botocore retry defaults for object-store requests (see ``s3_retries``).
DEFAULT_S3_RETRY_MODE = "adaptive"
DEFAULT_S3_MAX_ATTEMPTS = 10


class SourceNotFound(ColdpressError, FileNotFoundError):
    """The SRC of a job does not exist."""


#: File name endings of images, for tools that pick images out of a folder by name (training,
#: benchmarks). Archiving does not filter by name: every file is read and non-images are rejected.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".ppm", ".avif")


def _protocol(url: str) -> str:
    protocol, _ = fsspec.core.split_protocol(url)
    return protocol or "file"


def s3_retries() -> dict[str, Any]:
    """botocore's retry settings for S3: ``{"mode": ..., "max_attempts": ...}``.

    Mode from ``$AWS_RETRY_MODE`` (``standard``, ``adaptive`` or ``legacy``; default ``adaptive``: the
    standard mode plus client-side rate limiting, which is what throttling stores need), attempts from
    ``$AWS_MAX_ATTEMPTS`` (default 10): the AWS SDKs' own variables, so one setting serves every tool.
    """
    mode = os.environ.get("AWS_RETRY_MODE", DEFAULT_S3_RETRY_MODE).strip().lower()
    if mode not in ("standard", "adaptive", "legacy"):
        raise ColdpressError(f"AWS_RETRY_MODE={mode!r} is not a botocore retry mode; set standard, adaptive or legacy")
    attempts = os.environ.get("AWS_MAX_ATTEMPTS", str(DEFAULT_S3_MAX_ATTEMPTS)).strip()
    if not attempts.isdigit() or int(attempts) < 1:
        raise ColdpressError(f"AWS_MAX_ATTEMPTS={attempts!r} is not a positive whole number; set e.g. 10")
    return {"mode": mode, "max_attempts": int(attempts)}


def redact_url(url: str) -> str:
    """``url`` with any user:password (or token) before the host replaced by ``***``, for messages."""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return text
    return f"{scheme}://***@{authority.rsplit('@', 1)[1]}{slash}{path}"


def _check_endpoint(endpoint: str, where: str) -> None:
    """Refuse an S3 endpoint URL that carries credentials (they would be sent nowhere useful, and
    end up in logs and error messages): say so without repeating them."""
    if redact_url(endpoint) != str(endpoint):
        raise ColdpressError(
            f"the S3 endpoint URL {redact_url(endpoint)} ({where}) carries credentials before the host; S3 "
            "requests are signed with an access key, not URL credentials: remove them from the URL and give "
            "the key as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or a profile)"
        )


def _with_s3_endpoint(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` plus, for S3 URLs, the endpoint from the environment when they name none,
    and botocore's retry settings (``s3_retries``) when they give none."""
    options = dict(storage_options or {})
    if _protocol(url) not in _S3_PROTOCOLS:
        return options
    config_kwargs = dict(options.get("config_kwargs") or {})
    if "retries" not in config_kwargs:
        config_kwargs["retries"] = s3_retries()
        options["config_kwargs"] = config_kwargs
    client_kwargs = dict(options.get("client_kwargs") or {})
    if options.get("endpoint_url") or client_kwargs.get("endpoint_url"):
        _check_endpoint(options.get("endpoint_url") or client_kwargs.get("endpoint_url"), "--endpoint-url")
        return options
    for var in S3_ENDPOINT_ENV_VARS:
        endpoint = os.environ.get(var)
        if endpoint:
            _check_endpoint(endpoint, f"${var}")
            client_kwargs["endpoint_url"] = endpoint
            options["client_kwargs"] = client_kwargs
            break
    return options


def filesystem_for(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for a local path or fsspec URL.

    ``storage_options`` go to the filesystem (e.g. ``{"anon": True}`` or
    ``{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}``); for S3 URLs an endpoint from
    ``COLDPRESS_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL`` is added when the options name none.
    """
    fs, path = fsspec.core.url_to_fs(str(url), **_with_s3_endpoint(str(url), storage_options))
    return retries.watch(fs), path  # S3: its retries are counted (transforms/retries.py)


def _uri(fs: fsspec.AbstractFileSystem, path: str, src: str) -> str:
    """The URI recorded for a listed file: a plain absolute path for local SRCs given as paths."""
    if isinstance(fs, LocalFileSystem) and "://" not in str(src):
        return os.path.normpath(path)
    return fs.unstrip_protocol(path)


def _is_local(uri: str) -> bool:
    """Whether ``uri`` (a file, or a dataset member: its shard) is on a local disk."""
    from coldpress.transforms import datasets

    member = datasets.member_uri(uri)
    return _protocol(member[0] if member else uri) in ("file", "local")


def _is_hidden(key: str) -> bool:
    return any(part.startswith(".") for part in key.split("/"))


def _listed_link(fs, path: str, info: dict[str, Any]) -> bool:
    """Whether an entry that is no regular file is a link to list: one to a file, to a folder or to nothing
    (the last two end up rejected with their reason); a link to a FIFO or a device is skipped like them, as
    reading it could block or never end."""
    if not info.get("islink"):
        return False
    try:
        return fs.info(path).get("type") in ("file", "directory")
    except FileNotFoundError:
        return True


def list_sources(src: str, storage_options: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """Every regular file (and link, below) under ``src`` as sorted ``(uri, key)`` pairs.

    ``key`` is the file's path relative to ``src`` with forward slashes; a ``src`` that is a single
    file gives its basename. Hidden files and everything inside hidden folders (names starting with
    ".") are skipped. Symbolic links are listed under their own names and read through (datasets often
    link their files in); a link that leads to no file (dangling, or to a folder, which is not walked:
    links can loop) is listed too, so that it ends up rejected with its reason instead of lost. Nothing else is filtered: files that are not images are listed, and end up in
    the rejected table with a reason. ``uri`` is what :func:`read_bytes` takes: an absolute path for
    local sources, a full URL (``s3://bucket/key``) otherwise. A dataset source (``parquet:PATH``,
    ``webdataset:PATH``, ``listing:PATH``: ``transforms.datasets``) lists its samples instead.
    """
    from coldpress.transforms import datasets

    if datasets.dataset_kind(src) is not None:
        return datasets.list_dataset(src, storage_options)
    fs, root = filesystem_for(src, storage_options)
    if not fs.exists(root):
        raise SourceNotFound(
            f"source {src!r} does not exist or cannot be seen with the given credentials; check the "
            "path (and for object stores the bucket, endpoint and credentials)"
        )
    if fs.isfile(root):
        name = posixpath.basename(root.rstrip("/")) or root
        return [(_uri(fs, root, src), name)]
    root = root.rstrip("/")
    prefix = root + "/" if root else ""
    pairs: list[tuple[str, str]] = []
    for path, info in fs.find(root, withdirs=False, detail=True).items():
        if info.get("type", "file") != "file" and not _listed_link(fs, path, info) or not path.startswith(prefix):
            continue
        key = path[len(prefix):]
        if not key or key.endswith("/") or _is_hidden(key):
            continue
        pairs.append((_uri(fs, path, src), key))
    pairs.sort(key=lambda pair: (pair[1], pair[0]))
    return pairs


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The whole content of the file at ``uri`` (local path or fsspec URL, or a dataset member:
    ``<shard>::<member>``, see ``transforms.datasets``)."""
    from coldpress.transforms import datasets

    if datasets.member_uri(uri) is not None:
        return datasets.read_member(uri, storage_options)
    fs, path = filesystem_for(uri, storage_options)
    return fs.cat_file(path)


#: A raster source (by its name's ending and first bytes) of at least this many bytes is not read whole:
#: ``read_source`` gives a ``SourceFile`` and GDAL reads its pixels window by window, so encoding holds
#: one tile, not the file (results/raster/memory.txt).
LARGE_SOURCE_BYTES = 64 * 2**20
#: Name endings of the raster files ``read_source`` may leave on disk (GDAL formats with random access).
LARGE_SOURCE_SUFFIXES = (".tif", ".tiff", ".gtif", ".jp2", ".j2k", ".img", ".ntf", ".vrt")
_READ_CHUNK = 8 * 2**20
_RASTER_HEADS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+", b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")


@dataclass(frozen=True)
class SourceFile:
    """A large raster source left where it is: its size, sha256 and first bytes, streamed once; GDAL
    then opens ``uri`` itself (``transforms.raster.open_bytes``) and reads only the windows it needs.
    Slicing gives the first bytes (what format sniffing reads); ``read()`` gives them all."""

    uri: str
    size: int
    sha256: str
    head: bytes
    storage_options: dict[str, Any] | None = None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> bytes:
        if not isinstance(key, slice) or key.step not in (None, 1) or (key.start or 0) < 0 or key.stop is None \
                or key.stop > len(self.head):
            raise TypeError(f"a SourceFile only slices its first {len(self.head)} bytes; read() it for the rest")
        return self.head[key]

    def read(self) -> bytes:
        return read_bytes(self.uri, self.storage_options)

    def filesystem(self) -> tuple[fsspec.AbstractFileSystem, str]:
        return filesystem_for(self.uri, self.storage_options)


def read_source(uri: str, storage_options: dict[str, Any] | None = None) -> bytes | SourceFile:
    """The bytes of the source at ``uri``, or, for a raster file of ``LARGE_SOURCE_BYTES`` or more, a
    ``SourceFile``: its sha256 is computed reading it in 8 MB chunks, and its pixels are read later by
    GDAL window by window, so no more than a chunk of it is held in memory at a time."""
    from coldpress.transforms import datasets

    if datasets.member_uri(uri) is not None or not uri.lower().endswith(LARGE_SOURCE_SUFFIXES):
        return read_bytes(uri, storage_options)
    fs, path = filesystem_for(uri, storage_options)
    if fs.size(path) < LARGE_SOURCE_BYTES:
        return fs.cat_file(path)
    digest, head, size = hashlib.sha256(), b"", 0
    with fs.open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            if not head:
                head = bytes(chunk[:64])
            digest.update(chunk)
            size += len(chunk)
    if not head.startswith(_RASTER_HEADS):  # named like a raster but is not one: read whole, as any file
        return read_bytes(uri, storage_options)
    return SourceFile(uri=uri, size=size, sha256=digest.hexdigest(), head=head, storage_options=storage_options)


def source_sha256(data: bytes | SourceFile) -> str:
    """sha256 (hex) of a source's bytes, read whole or streamed (``SourceFile``)."""
    return data.sha256 if isinstance(data, SourceFile) else hashlib.sha256(data).hexdigest()


def _read_or_error(uri: str, storage_options: dict[str, Any] | None) -> bytes | SourceFile | Exception:
    """``read_source``, or the exception it raised (``records.process_input`` rejects it with the reason)."""
    try:
        return read_source(uri, storage_options)
    except Exception as exc:  # noqa: BLE001 - becomes a rejected row with the reason
        return exc


def read_ahead(
    sources: list[tuple[str, str]], storage_options: dict[str, Any] | None = None
) -> Iterator[tuple[str, str, bytes | SourceFile | Exception]]:
    """(uri, key, bytes (a ``SourceFile`` for a large raster: ``read_source``) or the exception reading
    them) for each ``(uri, key)`` source, in order.

    Reads up to READ_AHEAD sources ahead in READ_THREADS background threads when any of them is remote
    (object stores are slow to answer); local files (and members of local dataset shards) are read in
    the caller's thread, as it needs them: there the threads' hand-offs cost more than the reads
    (0.4 ms a file, 1.5x a 64x64 JPEG's whole encode). A source that cannot be read gives its exception instead of
    bytes: ``records.process_input`` turns it into a rejected row with the reason.
    """
    if not sources:
        return
    if all(_is_local(uri) for uri, _ in sources):  # a local disk answers at once: threads only cost
        for uri, key in sources:
            yield uri, key, _read_or_error(uri, storage_options)
        return
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(sources)), thread_name_prefix="coldpress-read") as pool:
        pending: deque[tuple[str, str, Future]] = deque()
        it = iter(sources)

        def submit() -> None:
            for uri, key in it:
                pending.append((uri, key, pool.submit(_read_or_error, uri, storage_options)))
                return

        for _ in range(READ_AHEAD):
            submit()
        while pending:
            uri, key, future = pending.popleft()
            submit()
            yield uri, key, future.result()


#: Appended to the key of a source whose id another source of the same listing already has
#: (``plan.plan_encode``): ``record_id`` rejects it with the reason.
COLLISION_MARK = "\x00collision"
#: Appended to the key of a dataset's second input with an id already taken (``datasets``): ``record_id``
#: rejects it with the reason.
DUPLICATE_MARK = "\x00duplicate"


def record_id(key: str) -> str:
    """The stable archive id of a source key: the normalized relative key.

    Backslashes become forward slashes, leading "/" and "./" go, "//" and "/./" collapse and a trailing
    "/" is dropped. A key with a ".." component, a NUL character or nothing left is rejected with
    InputRejected: such keys do not name a file inside SRC.
    """
    raw = str(key)
    if raw.endswith(DUPLICATE_MARK):  # datasets: another input of the dataset has this id
        raise InputRejected(
            f"id {raw[:-len(DUPLICATE_MARK)]!r} is also the id of another input of this dataset, which was archived "
            "under it; make the dataset's ids unique (another --id-column, or the default positional ids)"
        )
    if raw.endswith(COLLISION_MARK):  # plan.plan_encode: another key of SRC gives the same id
        key = raw[:-len(COLLISION_MARK)]
        raise InputRejected(
            f"source key {key!r} gives the id {record_id(key)!r}, which another file under SRC also gives (keys "
            "that differ only in repeated '/' or './' give one id) and which is that file's; rename one of them"
        )
    if "\x00" in raw:
        raise InputRejected(
            f"source key {raw!r} contains a NUL character; rename the file, coldpress cannot give it a safe id"
        )
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InputRejected(
            f"source key {raw!r} has a '..' component and does not name a file inside SRC; list "
            "sources with coldpress.transforms.sources.list_sources or pass keys relative to SRC"
        )
    if not parts:
        raise InputRejected(f"source key {raw!r} is empty after normalization; pass the file's path relative to SRC")
    return "/".join(parts)


def list_images(folders: list[str] | str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """URIs of the image files (by name: ``IMAGE_SUFFIXES``) under each folder, in ``list_sources``
    order: what training and benchmarks read (archiving reads every file instead); local links that lead
    to no file are left out."""
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    return [uri for folder in folders for uri, key in list_sources(str(folder), storage_options)
            if key.lower().endswith(IMAGE_SUFFIXES) and (not os.path.isabs(uri) or os.path.isfile(uri))]


def read_rgb(uri: str, storage_options: dict[str, Any] | None = None):
    """The image at ``uri`` (local path or fsspec URL) as a uint8 RGB array, for training and
    benchmarks (archiving goes through ``transforms.read`` and its checks)."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(read_bytes(uri, storage_options))) as im:
        return np.asarray(im.convert("RGB"))
