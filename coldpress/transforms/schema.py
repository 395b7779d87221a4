"""The Arrow schemas of a coldpress archive and the one set of Parquet writer options.

Two tables make an archive (see docs/FORMAT.md, "Archive (Parquet)"):

* data shards (``ARCHIVE_SCHEMA``): one row per archived image, carrying the bitstream and what is
  needed to trust and restore it;
* the rejected table (``REJECTED_SCHEMA``): one row per input that could not be archived, with why.

Every engine (local, Ray, Beam) builds its tables with ``rows_to_table`` / ``rejected_to_table``
and writes them with ``parquet_write_options()`` and ``row_group_bounds()`` (through
``coldpress.transforms.archive.write_shard``), so that all engines write identical files.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ARCHIVE_FORMAT_VERSION = 1
# Schema-level (Parquet key-value) metadata that marks a file as a coldpress data shard / rejected table.
FORMAT_KEY = b"coldpress.format"
ARCHIVE_FORMAT = f"archive/{ARCHIVE_FORMAT_VERSION}"
REJECTED_FORMAT = f"rejected/{ARCHIVE_FORMAT_VERSION}"
# Per-file metadata written by write_shard: the sum of the bitstream lengths in the file.
BITSTREAM_BYTES_KEY = b"coldpress.bitstream_bytes"

_UTC_US = pa.timestamp("us", tz="UTC")

# The bitstream comes last: a reader that wants every column but the bitstream then reads one
# contiguous byte range per row group.
ARCHIVE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("source_bytes", pa.int64(), nullable=False),
        pa.field("source_sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("source_format", pa.string()),
        pa.field("source_mode", pa.string()),
        pa.field("codec", pa.string(), nullable=False),
        pa.field("model_id", pa.string()),
        pa.field("weights_hash", pa.string()),
        pa.field("target_bpp", pa.float64(), nullable=False),
        pa.field("achieved_bpp", pa.float64(), nullable=False),
        pa.field("bitstream_sha256", pa.string(), nullable=False),
        pa.field("recon_sha256", pa.string()),
        pa.field("psnr", pa.float64()),
        pa.field("metadata", pa.string()),
        pa.field("coldpress_version", pa.string(), nullable=False),
        pa.field("codec_version", pa.string()),
        pa.field("torch_version", pa.string()),
        pa.field("device_class", pa.string()),
        pa.field("created_at", _UTC_US, nullable=False),
        pa.field("bitstream", pa.binary(), nullable=False),
    ],
    metadata={FORMAT_KEY: ARCHIVE_FORMAT.encode()},
)

REJECTED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("created_at", _UTC_US, nullable=False),
    ],
    metadata={FORMAT_KEY: REJECTED_FORMAT.encode()},
)

# Columns whose values repeat across rows: dictionary-encoded (a few bytes per row group instead of
# the string per row).
DICTIONARY_COLUMNS = (
    "mode",
    "source_format",
    "source_mode",
    "codec",
    "model_id",
    "weights_hash",
    "target_bpp",
    "coldpress_version",
    "codec_version",
    "torch_version",
    "device_class",
)
# Columns with min/max statistics. ``id`` is the one that matters: rows are sorted by id, so each
# row group covers a narrow id range and a reader looking for a few ids skips the other row groups.
# The numeric ones are small and make filters on size/rate/quality/time cheap. No statistics for
# the bitstream, the hashes, the URI and the metadata JSON (nobody filters on them by range), nor
# for the dictionary-encoded strings (their dictionary page already lists the values).
STATISTICS_COLUMNS = (
    "id",
    "source_bytes",
    "width",
    "height",
    "target_bpp",
    "achieved_bpp",
    "psnr",
    "created_at",
)
COMPRESSION = "zstd"
# Level 15: 8-11 bytes/row smaller than levels 1-9 (hashes, metadata JSON), for ~0.09 ms/row.
COMPRESSION_LEVEL = 15
# The bitstream payload is entropy-coded and does not compress, but every container starts with
# the same ~60-byte header (magic, codec, model id, weights hash, params): zstd level 1 removes
# those repeats (~65 bytes/row) at memcpy-like speed, and stores incompressible blocks raw.
BITSTREAM_COMPRESSION_LEVEL = 1
# A row group ends at ROW_GROUP_ROWS rows or once its bitstreams reach ROW_GROUP_BYTES, whichever
# comes first: reading one id reads one row group, so this bounds the bytes a restore of one image
# reads, whatever the image size (see docs/FORMAT.md for the measurements behind these numbers).
ROW_GROUP_ROWS = 256
ROW_GROUP_BYTES = 1 << 20
DATA_PAGE_SIZE = 1 << 20


def parquet_write_options(schema: pa.Schema = ARCHIVE_SCHEMA) -> dict[str, Any]:
    """The keyword arguments of ``pq.write_table`` for a coldpress table with ``schema``.

    For ``pq.ParquetWriter`` pop ``row_group_size`` and pass it to ``ParquetWriter.write_table``.
    Data shards should be written with ``coldpress.transforms.archive.write_shard``, which also
    bounds row groups by bytes (``row_group_bounds``).
    """
    names = set(schema.names)
    options: dict[str, Any] = {
        "compression": {name: COMPRESSION for name in schema.names},
        "compression_level": {
            name: (BITSTREAM_COMPRESSION_LEVEL if name == "bitstream" else COMPRESSION_LEVEL) for name in schema.names
        },
        "use_dictionary": [name for name in DICTIONARY_COLUMNS if name in names],
        "write_statistics": [name for name in STATISTICS_COLUMNS if name in names],
        "row_group_size": ROW_GROUP_ROWS,
        "data_page_size": DATA_PAGE_SIZE,
        "version": "2.6",
        "data_page_version": "1.0",
        "write_page_index": False,
        # CRC32 of every page: readers that verify (coldpress does) detect a flipped bit anywhere.
        "write_page_checksum": True,
        "store_schema": True,
    }
    if "id" in names:
        options["sorting_columns"] = [pq.SortingColumn(schema.get_field_index("id"))]
    return options


def row_group_bounds(table: pa.Table) -> list[tuple[int, int]]:
    """(offset, length) of each row group of ``table``: at most ROW_GROUP_ROWS rows, and a new group
    starts before the bitstreams of one would exceed ROW_GROUP_BYTES (a group holds at least one row)."""
    n = table.num_rows
    if n == 0:
        return []
    if "bitstream" not in table.column_names:
        return [(start, min(ROW_GROUP_ROWS, n - start)) for start in range(0, n, ROW_GROUP_ROWS)]
    lengths = pc.binary_length(table.column("bitstream")).to_pylist()
    bounds: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, length in enumerate(lengths):
        rows = i - start
        if rows and (rows >= ROW_GROUP_ROWS or size + length > ROW_GROUP_BYTES):
            bounds.append((start, rows))
            start, size = i, 0
        size += length
    bounds.append((start, n - start))
    return bounds


def _utc(value: Any, field: str, row_id: Any) -> _dt.datetime:
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"row {row_id!r}: {field}={value!r} is not an ISO 8601 timestamp; pass a datetime "
                "(UTC) or an ISO 8601 string such as '2025-01-31T12:00:00+00:00'"
            ) from None
    if not isinstance(value, _dt.datetime):
        raise ValueError(f"row {row_id!r}: {field} must be a datetime or ISO 8601 string, got {type(value).__name__}")
    if value.tzinfo is None:  # naive datetimes are taken as UTC
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value.astimezone(_dt.timezone.utc)


def _normalize(name: str, value: Any, row_id: Any) -> Any:
    if value is None:
        return None
    if name == "created_at":
        return _utc(value, name, row_id)
    if name == "bitstream" and not isinstance(value, bytes):
        return bytes(value)
    if name == "metadata" and not isinstance(value, str):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return value


def _build_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema, what: str, sort: bool = True) -> pa.Table:
    rows = list(rows)
    names = schema.names
    required = {f.name for f in schema if not f.nullable}
    known = set(names)
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for row in rows:
        row_id = row.get("id")
        missing = [name for name in names if name not in row]
        if missing:
            raise ValueError(
                f"{what} row {row_id!r} lacks field(s) {', '.join(missing)}; every row needs all of "
                f"{', '.join(names)} (coldpress.transforms.records makes such rows)"
            )
        unknown = sorted(set(row) - known)
        if unknown:
            raise ValueError(
                f"{what} row {row_id!r} has unknown field(s) {', '.join(unknown)}; the archive schema has "
                "no such columns: put extra information in the 'metadata' JSON instead"
            )
        for name in names:
            value = _normalize(name, row[name], row_id)
            if value is None and name in required:
                raise ValueError(f"{what} row {row_id!r}: field {name!r} is None but the archive requires a value")
            columns[name].append(value)
    arrays = []
    for field in schema:
        try:
            arrays.append(pa.array(columns[field.name], type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise ValueError(f"{what} column {field.name!r} must hold {field.type} values: {exc}") from exc
    table = pa.Table.from_arrays(arrays, schema=schema)
    return _sorted_by_id(table, what) if sort else table


def _sorted_by_id(table: pa.Table, what: str) -> pa.Table:
    if table.num_rows == 0:
        return table
    table = table.sort_by("id")
    ids = table.column("id")
    if pc.count_distinct(ids).as_py() != table.num_rows:
        dupes = pc.value_counts(ids)
        repeated = [d["values"] for d in dupes.to_pylist() if d["counts"] > 1]
        raise ValueError(
            f"{what} rows repeat id(s) {', '.join(map(repr, repeated[:10]))}"
            f"{' ...' if len(repeated) > 10 else ''}; each source key may appear once in a shard"
        )
    return table


def conform_table(table: pa.Table | pa.RecordBatch, schema: pa.Schema = ARCHIVE_SCHEMA) -> pa.Table:
    """An Arrow table with the columns of ``schema`` (any order, castable types) as a table of
    exactly ``schema``, sorted by id. Raises ValueError naming missing columns."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ValueError(f"table lacks column(s) {', '.join(missing)} of the coldpress schema")
    unknown = sorted(set(table.column_names) - set(schema.names))
    if unknown:
        raise ValueError(f"table has unknown column(s) {', '.join(unknown)}; the coldpress schema has no such columns")
    table = table.select(schema.names)
    try:
        table = table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"table does not match the coldpress schema: {exc}") from exc
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise ValueError(f"column {field.name!r} holds nulls but the archive requires a value in every row")
    what = "rejected" if schema.metadata.get(FORMAT_KEY) == REJECTED_FORMAT.encode() else "archive"
    return _sorted_by_id(table, what)


def rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Archive rows (dicts with exactly the fields of ARCHIVE_SCHEMA) as a table sorted by id.

    ``created_at`` may be a datetime (naive = UTC) or an ISO 8601 string; ``metadata`` a JSON string
    or a JSON-able object. Raises ValueError naming the row and field when a row does not fit.
    """
    return _build_table(rows, ARCHIVE_SCHEMA, "archive")


def rejected_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rejected rows (dicts with id, source_uri, reason, created_at) as a table sorted by id."""
    return _build_table(rows, REJECTED_SCHEMA, "rejected")


def validate_row(row: Mapping[str, Any], rejected: bool = False) -> None:
    """Raise ValueError (naming the row and field) unless ``row`` fits ARCHIVE_SCHEMA (or REJECTED_SCHEMA)."""
    if rejected:
        _build_table([row], REJECTED_SCHEMA, "rejected", sort=False)
    else:
        _build_table([row], ARCHIVE_SCHEMA, "archive", sort=False)


def format_tag(schema_metadata: Mapping[bytes, bytes] | None) -> str | None:
    """The coldpress format tag ("archive/1", "rejected/1") in a file's schema metadata, or None."""
    value = (schema_metadata or {}).get(FORMAT_KEY)
    return value.decode("utf-8", "replace") if value is not None else None
