"""Reading an archive: open it, find rows by id with few bytes, iterate, read the rejected table."""

from __future__ import annotations

import bisect
import dataclasses
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from coldpress.errors import ArchiveError
from coldpress.versions import coldpress_version
from coldpress.transforms.archive.layout import (
    ARCHIVE_LAYOUT,
    MANIFEST_NAME,
    REJECTED_NAME,
    SideFiles,
    _corrupt,
    _display,
    _Entry,
    _is_local,
    _list_dir,
    _open_read,
    _resolve,
    _shard_entries,
    _side_files,
)
from coldpress.transforms.archive.manifest import _manifest_entry, _read_manifest
from coldpress.transforms.archive.shards import _describe_shard, _read_footer, _read_rejected_file
from coldpress.transforms.schema import ARCHIVE_FORMAT, ARCHIVE_SCHEMA, REJECTED_SCHEMA


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


class Archive:
    """A coldpress archive opened for reading (see ``open_archive``).

    Shard footers are read lazily: a shard the manifest describes (same name and size on storage)
    is only opened when a read needs it, so restoring one id from an archive of many shards reads
    one footer and one row group.
    """

    def __init__(self, fs: Any, root: str, entries: list[_Entry], manifest: dict[str, Any] | None,
                 side: SideFiles | None = None) -> None:
        self._fs = fs
        self._root = root
        self.path = _display(fs, root)
        self._entries = entries
        self.manifest = manifest
        self._side = side or SideFiles(None, None, ())
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
    def layout(self) -> int:
        """The archive's layout: 1 while it holds layout-1 side files (``manifest.json``,
        ``rejected.parquet``; ``coldpress upgrade`` renames them), else 2."""
        return self._side.layout

    @property
    def legacy_files(self) -> tuple[str, ...]:
        """Layout-1 side files still in the archive (names relative to its root)."""
        return self._side.legacy

    @property
    def side_files(self) -> list[str]:
        """The manifest and rejected table this archive holds (names relative to its root)."""
        return [n for n in (self._side.manifest, self._side.rejected) if n]

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
        if self._side.rejected is None:
            return REJECTED_SCHEMA.empty_table()
        return _read_rejected_file(self._fs, f"{self._root}/{self._side.rejected}").replace_schema_metadata(None)


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
            + f" (it is the directory a coldpress job wrote, holding {MANIFEST_NAME} and part-*.parquet)"
        )
    shards = _shard_entries(fs, root, entries)
    side = _side_files(fs, root, entries)
    manifest = _read_manifest(fs, root, side.manifest) if side.manifest else None
    if not shards and manifest is None and side.rejected is None:
        raise ArchiveError(
            f"{_display(fs, root)} is not a coldpress archive: it holds no part-*.parquet shards, no "
            f"{MANIFEST_NAME} and no {REJECTED_NAME}. Point to the directory a coldpress job wrote."
        )
    if manifest is not None and manifest.get("format") != ARCHIVE_FORMAT:
        found = manifest.get("format")
        if isinstance(found, str) and found.startswith("archive/"):
            raise ArchiveError(
                f"{_display(fs, root)} is a coldpress archive in format {found!r}, which this coldpress "
                f"({coldpress_version()}) cannot read (it reads {ARCHIVE_FORMAT!r}); upgrade coldpress"
            )
        raise ArchiveError(
            f"{_display(fs, f'{root}/{side.manifest}')} is not a coldpress manifest (format={found!r}); "
            "point to a directory written by coldpress, or delete that file if it is a stray"
        )
    layout = manifest.get("layout", 1) if manifest is not None else None
    if isinstance(layout, int) and layout > ARCHIVE_LAYOUT:
        raise ArchiveError(
            f"{_display(fs, root)} is a coldpress archive of layout {layout}, which this coldpress "
            f"({coldpress_version()}) cannot read (it reads layouts 1 to {ARCHIVE_LAYOUT}); upgrade coldpress"
        )
    return Archive(fs, root, shards, manifest, side)


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
    archive = Archive(fs, root, shards, None)
    ids: set[str] = set()
    for i in range(len(shards)):
        ids.update(archive._read_shard(i, None, ["id"]).column("id").to_pylist())
    return ids
