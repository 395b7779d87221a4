"""Reading what can be read of a damaged archive: every intact row, and every damage by id.

``salvage(archive)`` never trusts one damaged part to stop the others: the manifest, each shard's
footer, each row group and the rejected table are read on their own. It yields the intact rows in
record batches and a ``Damage`` for each part that could not be read, naming the ids it held (from
the row group's id column when that is intact, else from the footer's or the manifest's id range of
the shard). A row is only yielded when its row group's pages passed their checksums; decoding it
still checks its bitstream against ``bitstream_sha256`` (``records.decode_record``), so nothing
damaged decodes to wrong pixels. Failures of the environment (a lost connection, an I/O error of the
disk) raise EnvironmentFault instead: an intact file is never called damaged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from coldpress.errors import ArchiveError, EnvironmentFault
from coldpress.transforms.archive.layout import (
    _corrupt,
    _display,
    _list_dir,
    _open_read,
    _resolve,
    _shard_entries,
    _side_files,
)
from coldpress.transforms.archive.manifest import _read_manifest
from coldpress.transforms.archive.shards import _read_rejected_file

_READ_ERRORS = (pa.ArrowException, OSError, EOFError, ValueError, IndexError, KeyError)


@dataclass
class Damage:
    """A part of an archive that could not be read: ``where`` (file, and row group), ``ids`` it held
    (exact when ``exact``, else the ids between ``id_range`` bounds), and ``problem``."""

    where: str
    problem: str
    ids: list[str] = field(default_factory=list)
    id_range: tuple[str | None, str | None] | None = None
    rows: int | None = None
    #: What to do, when it is not "restore the file from a replica or re-encode its ids".
    advice: str | None = None

    def describe(self) -> str:
        if self.advice:
            return f"{self.where} is damaged ({self.problem}); {self.advice}"
        if self.ids:
            held = f"{len(self.ids)} row(s)"
        elif self.id_range:
            held = f"{self.rows if self.rows is not None else 'its'} row(s) with ids {self.id_range[0]!r} to {self.id_range[1]!r}"
        else:
            held = "rows whose ids cannot be read"
        return (f"{self.where} is damaged ({self.problem}); {held} cannot be read: restore this file from a "
                "replica, or re-encode the sources of those ids into the archive")


def _problem(fs: Any, path: str, exc: BaseException) -> str:
    """The reason text of a damaged file, or raise EnvironmentFault when the environment failed."""
    err = _corrupt(fs, path, exc)
    if isinstance(err, EnvironmentFault):
        raise err from exc
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"


def _id_stats(md: pq.FileMetaData, rg: int) -> tuple[str | None, str | None]:
    try:
        col = md.schema.names.index("id")
        stats = md.row_group(rg).column(col).statistics
        if stats is not None and stats.has_min_max:
            return str(stats.min), str(stats.max)
    except Exception:  # noqa: BLE001 - a damaged footer: no range
        pass
    return None, None


def salvage(archive: Any, storage_options: Mapping[str, Any] | None = None, *, filesystem: Any = None,
            columns: list[str] | None = None, batch_size: int = 16,
            ) -> Iterator[tuple[str, Any]]:
    """("rows", RecordBatch) for the intact rows and ("damage", Damage) for each unreadable part of
    ``archive``, shard after shard, then ("damage", ...) for a damaged manifest or rejected table."""
    fs, root = _resolve(archive, storage_options, filesystem)
    entries = _list_dir(fs, root)
    side = _side_files(fs, root, entries or [])
    if entries is None or not (_shard_entries(fs, root, entries) or side.manifest or side.rejected):
        from coldpress.transforms.archive.reader import open_archive

        open_archive(root, filesystem=fs)  # no archive there: its error says so
        raise ArchiveError(f"{_display(fs, root)} holds no coldpress archive; check the path")
    known: dict[str, dict[str, Any]] = {}
    damages: list[Damage] = []
    if side.manifest:
        try:
            manifest = _read_manifest(fs, root, side.manifest) or {}
            for info in manifest.get("shards", []) or []:
                if isinstance(info, dict) and isinstance(info.get("name"), str):
                    known[info["name"]] = info
        except (ArchiveError, AttributeError, TypeError) as exc:
            damages.append(Damage(side.manifest, f"not a valid manifest: {str(exc)[:300]}", advice=(
                "no image is lost: every shard is read without it")))
    for entry in _shard_entries(fs, root, entries):
        info = known.get(entry.name, {})
        try:
            f = _open_read(fs, entry.path, entry.size)
            pf = pq.ParquetFile(f, pre_buffer=True, page_checksum_verification=True)
            md = pf.metadata
            groups = md.num_row_groups
        except _READ_ERRORS as exc:
            yield "damage", Damage(entry.name, f"its footer cannot be read: {_problem(fs, entry.path, exc)}",
                                   id_range=(info.get("min_id"), info.get("max_id")) if info else None,
                                   rows=info.get("rows"))
            continue
        with f:
            for rg in range(groups):
                try:
                    table = pf.read_row_group(rg, columns=columns)
                    if table.num_rows != md.row_group(rg).num_rows:
                        raise ValueError(f"{table.num_rows} rows read, the footer says {md.row_group(rg).num_rows}")
                except _READ_ERRORS as exc:
                    problem = _problem(fs, entry.path, exc)
                    ids: list[str] = []
                    try:
                        ids = [i for i in pf.read_row_group(rg, columns=["id"]).column("id").to_pylist() if i]
                    except _READ_ERRORS:
                        pass
                    lo, hi = _id_stats(md, rg)
                    yield "damage", Damage(f"{entry.name} row group {rg}", problem, ids=ids,
                                           id_range=(lo, hi) if lo is not None else None,
                                           rows=md.row_group(rg).num_rows)
                    continue
                for batch in table.replace_schema_metadata(None).to_batches(max_chunksize=batch_size):
                    yield "rows", batch
    if side.rejected:
        try:
            _read_rejected_file(fs, f"{root}/{side.rejected}")
        except (ArchiveError, *_READ_ERRORS) as exc:
            if isinstance(exc, EnvironmentFault):
                raise
            damages.append(Damage(side.rejected, f"the rejected table cannot be read: {str(exc)[:200]}", advice=(
                "no archived image is lost (it lists only inputs that were not archived): delete it, and the "
                "next encode of the same source retries those inputs and lists the ones rejected again")))
    for damage in damages:
        yield "damage", damage
