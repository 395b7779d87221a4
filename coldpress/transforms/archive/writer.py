"""ArchiveWriter: buffers rows into shards, then writes the rejected table and the manifest."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from coldpress.errors import ArchiveError
from coldpress.transforms import retries
from coldpress.versions import coldpress_version
from coldpress.transforms.archive.layout import (
    _SHARD_RE,
    ARCHIVE_LAYOUT,
    DEFAULT_BYTES_PER_SHARD,
    DEFAULT_ROWS_PER_SHARD,
    DEFAULT_SHARD_PREFIX,
    LEGACY_MANIFEST_NAME,
    LEGACY_REJECTED_NAME,
    REJECTED_NAME,
    _display,
    _exists,
    _is_local,
    _list_dir,
    _makedirs,
    _now,
    _remove,
    _resolve,
    _shard_entries,
    shard_name,
)
from coldpress.transforms.archive.manifest import _manifest_entry, _read_manifest, write_manifest
from coldpress.transforms.archive.shards import (
    _describe_shard,
    _read_rejected_file,
    next_shard_index,
    write_rejected,
    write_shard,
)
from coldpress.transforms.schema import (
    ARCHIVE_FORMAT,
    ARCHIVE_FORMAT_VERSION,
    REJECTED_SCHEMA,
    rejected_to_table,
    validate_row,
)


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
        self._retries_before = retries.snapshot()  # its own calls count from here: the reads below too
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
            # Layout 1 -> 2: the new side files are complete, so the old ones can go (see upgrade.py).
            _remove(self._fs, self._root, (LEGACY_REJECTED_NAME, LEGACY_MANIFEST_NAME))
            self._manifest = manifest
            return manifest

    def _write_rejected(self) -> dict[str, Any]:
        table = rejected_to_table(self._rejected.values())
        drop = set(self._ids | set(self._rejected))
        # Earlier rejections: the table of this layout first, then a layout-1 table (migrated here).
        for name in (REJECTED_NAME, LEGACY_REJECTED_NAME):
            path = f"{self._root}/{name}"
            if not _exists(self._fs, path):
                continue
            old = _read_rejected_file(self._fs, path)
            keep = old.filter(pc.invert(pc.is_in(old.column("id"), value_set=pa.array(sorted(drop), type=pa.string()))))
            if keep.num_rows:
                table = pa.concat_tables([table, keep.cast(REJECTED_SCHEMA)])
            drop.update(keep.column("id").to_pylist())
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
                "coldpress_version": extra.get("coldpress_version") or coldpress_version(),
                "pyarrow_version": pa.__version__,
            }
        )
        workers = run.pop("worker_storage_retries", None)
        planning = run.pop("planning_storage_retries", None)  # the engine's planning, before this writer existed
        if planning:
            workers = retries.add(workers or retries.zero(), planning)
        if not _is_local(fs) or (workers or {}).get("requests"):  # what storage made this process (and workers) retry
            run["storage_retries"] = retries.add(retries.since(self._retries_before), workers)
        if "torch_version" not in run and "torch" in sys.modules:
            run["torch_version"] = getattr(sys.modules["torch"], "__version__", None)
        runs = [r for r in (self._previous or {}).get("runs", []) if isinstance(r, dict)]
        manifest = dict(run)
        manifest.update(
            {
                "format": ARCHIVE_FORMAT,
                "format_version": ARCHIVE_FORMAT_VERSION,
                "layout": ARCHIVE_LAYOUT,
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
