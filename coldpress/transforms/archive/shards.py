"""Parquet files of an archive: write data shards and the rejected table, read and check footers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from coldpress.errors import ArchiveError
from coldpress.versions import coldpress_version
from coldpress.transforms.archive.layout import (
    _SHARD_RE,
    DEFAULT_SHARD_PREFIX,
    REJECTED_NAME,
    Rows,
    _atomic_write,
    _corrupt,
    _display,
    _Entry,
    _exists,
    _list_dir,
    _makedirs,
    _open_read,
    _resolve,
    _shard_entries,
    shard_name,
)
from coldpress.transforms.schema import (
    ARCHIVE_FORMAT,
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
)


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
            f"{where} is in coldpress format {found!r}, which this coldpress ({coldpress_version()}) "
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
