"""Where an archive's files live, and the storage primitives every archive module uses.

An archive is a directory, local or on any fsspec filesystem (``s3://bucket/prefix``)::

    part-00000.parquet            data shards (ARCHIVE_SCHEMA), rows sorted by id within each shard
    part-00001.parquet            ... (deterministic names: engines choose the shard indexes)
    _rejected/rejected.parquet    inputs that could not be archived, with the reason (REJECTED_SCHEMA)
    _manifest.json                the run manifest (counts, codec, versions, timings, shard list)

Only data shards sit at the top level under a ``.parquet`` name, and every side file starts with
``_`` (the Hive/Spark/Delta convention for "not data"), so ``pyarrow.parquet.read_table(archive)``,
pandas, Ray, pyarrow.dataset and the ``archive/*.parquet`` glob of DuckDB, Polars or Hugging Face
``datasets`` read exactly the archived rows. Archives of layout 1 (``manifest.json`` and
``rejected.parquet`` at the top level) are still read; the next write, or ``coldpress upgrade``,
moves their side files to the names above (see ``upgrade.py`` and docs/FORMAT.md).

Every file is written under a temporary name starting with '.' in its directory and moved to its
final name only once complete; readers ignore names starting with '.' or '_', so a crash leaves
at most temporary files behind and never a partial file under a final name.
"""

from __future__ import annotations

import datetime as _dt
import os
import posixpath
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from coldpress.errors import ArchiveError, ColdpressError, EnvironmentFault

#: The layout this coldpress writes (the names of the side files). 1: manifest.json and
#: rejected.parquet beside the shards; 2: _manifest.json and _rejected/rejected.parquet.
ARCHIVE_LAYOUT = 2
MANIFEST_NAME = "_manifest.json"
REJECTED_DIR = "_rejected"
REJECTED_NAME = f"{REJECTED_DIR}/rejected.parquet"  # relative to the archive root
LEGACY_MANIFEST_NAME = "manifest.json"  # layout 1
LEGACY_REJECTED_NAME = "rejected.parquet"  # layout 1
DEFAULT_SHARD_PREFIX = "part"
DEFAULT_ROWS_PER_SHARD = 10_000
DEFAULT_BYTES_PER_SHARD = 256 << 20
_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<index>\d+)\.parquet$")

from coldpress.transforms.sources import filesystem_for  # noqa: E402 - after the constants it does not use

Rows = Iterable[Mapping[str, Any]] | pa.Table | pa.RecordBatch


def _resolve(dst: Any, storage_options: Mapping[str, Any] | None, filesystem: Any = None) -> tuple[Any, str]:
    """(fsspec filesystem, path on it without trailing slash) for a local path or URL."""
    dst = os.fspath(dst)
    if filesystem is not None:
        root = filesystem._strip_protocol(dst)
    else:
        # sources.filesystem_for: the same S3 endpoint ($COLDPRESS_S3_ENDPOINT_URL) and retry settings
        # as every other part of coldpress
        filesystem, root = filesystem_for(dst, dict(storage_options or {}))
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
    if not prefix or "/" in prefix or prefix[0] in "._" or f"{prefix}.parquet" == LEGACY_REJECTED_NAME:
        raise ValueError(
            f"shard prefix {prefix!r} is not usable: it must be non-empty, contain no '/', not start "
            "with '.' or '_' (readers ignore such names) and not be 'rejected'"
        )
    return f"{prefix}-{index:05d}.parquet"


def _is_shard_name(name: str) -> bool:
    return name.endswith(".parquet") and name[0] not in "._" and name != LEGACY_REJECTED_NAME


def _shard_sort_key(name: str) -> tuple[str, int, str]:
    m = _SHARD_RE.match(name)
    return (m["prefix"], int(m["index"]), name) if m else (name, -1, name)


def _basename(entry: Mapping[str, Any]) -> str:
    return posixpath.basename(entry["name"].rstrip("/"))


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
        name = _basename(e)
        if _is_shard_name(name):
            shards.append(_Entry(name, f"{root}/{name}", int(e.get("size") or 0)))
    return sorted(shards, key=lambda s: _shard_sort_key(s.name))


@dataclass(frozen=True)
class SideFiles:
    """The side files an archive directory holds, as paths relative to its root (None: absent)."""

    manifest: str | None  # MANIFEST_NAME, else LEGACY_MANIFEST_NAME when only that one exists
    rejected: str | None  # REJECTED_NAME, else LEGACY_REJECTED_NAME when only that one exists
    legacy: tuple[str, ...]  # layout-1 files still present (removed by the next write or upgrade)

    @property
    def layout(self) -> int:
        """1 while layout-1 side files are present, else ARCHIVE_LAYOUT."""
        return 1 if self.legacy else ARCHIVE_LAYOUT


def _side_files(fs: Any, root: str, entries: list[dict[str, Any]]) -> SideFiles:
    files = {_basename(e) for e in entries if e.get("type") == "file"}
    dirs = {_basename(e) for e in entries if e.get("type") == "directory"}
    manifest = MANIFEST_NAME if MANIFEST_NAME in files else LEGACY_MANIFEST_NAME if LEGACY_MANIFEST_NAME in files else None
    rejected = None
    if REJECTED_DIR in dirs and _exists(fs, f"{root}/{REJECTED_NAME}"):
        rejected = REJECTED_NAME
    elif LEGACY_REJECTED_NAME in files:
        rejected = LEGACY_REJECTED_NAME
    legacy = tuple(n for n in (LEGACY_MANIFEST_NAME, LEGACY_REJECTED_NAME) if n in files)
    return SideFiles(manifest, rejected, legacy)


def _open_read(fs: Any, path: str, size: int | None = None) -> BinaryIO:
    """A file opened for random access without read-ahead: remote reads fetch only what pyarrow asks."""
    kwargs: dict[str, Any] = {"cache_type": "none"}
    if size and not _is_local(fs):
        kwargs["size"] = size
    return fs.open(path, "rb", **kwargs)


def _atomic_write(fs: Any, root: str, name: str, write: Callable[[BinaryIO], None]) -> int:
    """Write ``root/name`` (``name`` may hold a folder: ``_rejected/rejected.parquet``) through a
    temporary '.<basename>.tmp-<uuid>' file in the same folder, then move it to its final name.
    Returns the number of bytes written."""
    folder, base = posixpath.split(name)
    folder = f"{root}/{folder}" if folder else root
    final = f"{folder}/{base}"
    tmp = f"{folder}/.{base}.tmp-{uuid.uuid4().hex}"
    try:
        if _is_local(fs):
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                size = f.tell()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(folder)
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


def _remove(fs: Any, root: str, names: Iterable[str]) -> None:
    """Delete ``root/name`` for each name that exists (layout-1 side files once replaced)."""
    for name in names:
        path = f"{root}/{name}"
        if _exists(fs, path):
            fs.rm(path)
            if _is_local(fs):
                _fsync_dir(root)


def remove_run_folder(fs: Any, folder: str) -> None:
    """Remove a run's working folder (``_inputs/<run>``, ``_staging/<run>``) and its parent when no
    other run's folder is left in it; what is already gone is no error."""
    parent = folder.rstrip("/").rsplit("/", 1)[0]
    try:
        fs.rm(folder, recursive=True)
    except FileNotFoundError:
        pass
    try:
        fs.invalidate_cache(parent)
        if not fs.ls(parent):
            fs.rm(parent, recursive=True)
    except (FileNotFoundError, NotADirectoryError):
        pass


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


def _corrupt(fs: Any, path: str, exc: BaseException) -> ColdpressError:
    """The error of a shard that cannot be read: a damaged file (ArchiveError), unless reading it
    failed for the environment (a lost connection, expired credentials, an I/O error of the disk),
    which says so (EnvironmentFault) instead of calling an intact file damaged."""
    from coldpress.transforms.faults import environment_cause

    cause = environment_cause(exc)
    if cause is not None:
        return EnvironmentFault(f"could not read {_display(fs, path)}: {cause}; the file itself may be intact")
    return ArchiveError(
        f"{_display(fs, path)} cannot be read as Parquet ({type(exc).__name__}: {exc}). The file is "
        "probably truncated (an interrupted copy or upload) or corrupted. Restore it from a good copy; "
        "or delete it and re-run the job with resume, which encodes the inputs it held again."
    )


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


