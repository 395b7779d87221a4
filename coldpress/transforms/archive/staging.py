"""Staged rows: archived rows parked in the archive's ``_staging/`` folder until a writer cuts them into shards.

An engine whose workers cannot hand their rows to a writer cheaply (Beam: its local runner keeps what
flows between stages in the launching process, so 100,000 rows of 2 KB held for the shard cut cost
the launcher more than a gigabyte) writes the rows where they were encoded, as staged parts
(``stage_rows``), and passes on only their ids and bitstream sizes; each shard's writer then reads its
rows back (``read_staged``) and writes the shard with ``write_shard``, so the shard is the one the
rows themselves would have made. Staged parts are plain Parquet files under
``_staging/<run>/`` (a side folder: Parquet readers of the archive skip it, and nothing in it is an
archived row until a shard holds it), removed when the run ends (``remove_staging``) or, after an
interrupted run, by the next writer (``cleanup.clean_interrupted_writes``).
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from coldpress.errors import ArchiveError
from coldpress.transforms.archive.layout import _corrupt, _display, _open_read, _resolve, remove_run_folder
from coldpress.transforms.schema import ARCHIVE_SCHEMA, rows_to_table

#: Folder of an archive where a running writer keeps staged rows.
STAGING_DIR = "_staging"
#: Rows per row group of a staged part: a shard's writer reads only the groups that hold its ids.
STAGED_ROW_GROUP_ROWS = 256


def staging_folder(run: str) -> str:
    """The staging folder of run ``run``, relative to the archive root."""
    if not run or "/" in run or run.startswith("."):
        raise ValueError(f"a staging run name must be a plain, non-empty name, got {run!r}")
    return f"{STAGING_DIR}/{run}"


def stage_rows(dst: Any, run: str, rows: Iterable[Mapping[str, Any]], storage_options: Mapping[str, Any] | None = None,
               *, filesystem: Any = None) -> tuple[str, list[tuple[str, int]]]:
    """Write archive rows as one staged part of run ``run`` in archive ``dst``; returns (its name
    relative to the archive root, the (id, bitstream bytes) of its rows, sorted by id).

    The part is written under a new name (a retried task writes another part, which nothing
    references and the run's end removes), so it needs no atomic rename."""
    table = rows_to_table(rows)
    fs, root = _resolve(dst, storage_options, filesystem)
    name = f"{staging_folder(run)}/{uuid.uuid4().hex}.parquet"
    fs.makedirs(f"{root}/{staging_folder(run)}", exist_ok=True)
    with fs.open(f"{root}/{name}", "wb") as f:
        pq.write_table(table, f, row_group_size=STAGED_ROW_GROUP_ROWS, compression="lz4",
                       write_statistics=["id"], write_page_checksum=True)
    sizes = pc.binary_length(table.column("bitstream")).to_pylist()
    return name, list(zip(table.column("id").to_pylist(), sizes))


def read_staged(dst: Any, selection: Mapping[str, Sequence[str]], storage_options: Mapping[str, Any] | None = None,
                *, filesystem: Any = None) -> pa.Table:
    """The rows ``selection`` names (staged part name -> ids in it) as one archive table, sorted by id.

    Only the row groups of each part whose id range holds a wanted id are read. Raises
    ArchiveError when a part is missing or damaged or lacks a wanted id: a shard is never written
    without all of its rows."""
    fs, root = _resolve(dst, storage_options, filesystem)
    tables = []
    for name in sorted(selection):
        wanted = sorted(set(selection[name]))
        if not wanted:
            continue
        path = f"{root}/{name}"
        try:
            with _open_read(fs, path) as f:
                part = pq.ParquetFile(f)
                column = part.schema_arrow.get_field_index("id")
                groups = [g for g in range(part.num_row_groups)
                          if _may_hold(part.metadata.row_group(g).column(column).statistics, wanted)]
                table = part.read_row_groups(groups) if groups else ARCHIVE_SCHEMA.empty_table()
        except FileNotFoundError as exc:
            raise ArchiveError(f"the staged rows {_display(fs, path)} are gone: another run removed this run's "
                               "staging folder, or storage lost the file; run the encode again (it resumes)") from exc
        except (OSError, pa.ArrowException) as exc:
            raise _corrupt(fs, path, exc) from exc
        table = table.filter(pc.is_in(table.column("id"), value_set=pa.array(wanted, pa.string())))
        if table.num_rows != len(wanted):
            found = set(table.column("id").to_pylist())
            absent = [rid for rid in wanted if rid not in found]
            raise ArchiveError(f"the staged rows {_display(fs, path)} lack {len(absent)} of the rows that were staged "
                               f"there (first: {absent[0]!r}); run the encode again (it resumes)")
        tables.append(table)
    if not tables:
        return ARCHIVE_SCHEMA.empty_table()
    return pa.concat_tables(tables).sort_by("id")


def _may_hold(statistics: Any, wanted: Sequence[str]) -> bool:
    """Whether a row group with these id statistics can hold any of ``wanted`` (sorted)."""
    if statistics is None or not statistics.has_min_max:
        return True
    lo, hi = statistics.min, statistics.max
    if isinstance(lo, bytes):
        lo, hi = lo.decode(), hi.decode()
    i = bisect.bisect_left(wanted, lo)
    return i < len(wanted) and wanted[i] <= hi


def remove_staging(dst: Any, run: str, storage_options: Mapping[str, Any] | None = None,
                   *, filesystem: Any = None) -> None:
    """Remove run ``run``'s staged parts (and ``_staging`` when no other run's are left)."""
    fs, root = _resolve(dst, storage_options, filesystem)
    remove_run_folder(fs, f"{root}/{staging_folder(run)}")
