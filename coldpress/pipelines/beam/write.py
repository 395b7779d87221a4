"""WriteArchive: archived rows staged where they were encoded, cut into deterministic shards, then
the rejected table and the manifest, which counts the storage retries of every worker
(``TakeRetries``, ``transforms.retries``)."""

from __future__ import annotations

import datetime as _dt
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from coldpress.transforms import retries
from coldpress.transforms.archive import (DEFAULT_BYTES_PER_SHARD, DEFAULT_ROWS_PER_SHARD, ArchiveWriter,
    next_shard_index, write_shard)
from coldpress.transforms.archive.staging import read_staged, remove_staging, stage_rows, staging_folder
from coldpress.transforms.sources import filesystem_for, redact_url
from coldpress.pipelines.beam.options import ENGINE, ARCHIVED, REJECTED, RETRIES, graph_storage_options

log = logging.getLogger(__name__)
#: Rows, and bitstream bytes, of a staged part (``_StageRows``): what a worker holds before writing them.
STAGED_PART_ROWS = 1_000
STAGED_PART_BYTES = 64 << 20


class TakeRetries(beam.DoFn):
    """Applied to any output of a stage that calls object storage (the reads and the encode): when
    each bundle ends, the storage retries its process counted since it last took them
    (``retries.take``) leave as one element, for WriteArchive's ``storage_retries`` input. Taken
    counts are each taken once, so it does not matter which bundle of a process takes them."""

    def process(self, element: Any):
        return ()

    def finish_bundle(self):
        seen = retries.take()
        if seen["requests"] or seen["failed_attempts"]:
            yield GlobalWindows.windowed_value(seen)


class _StageRows(beam.DoFn):
    """Archived rows -> staged parts of the archive (``staging.stage_rows``), written where the rows
    were encoded, each of at most ``part_rows`` rows or ``part_bytes`` bitstream bytes; outputs one
    (part name, [(id, bitstream bytes)], the storage retries its process counted since it last took
    them) per part: what the shard cut needs, never the rows, which so never pass through the runner
    (FnApiRunner keeps every PCollection between stages in the launching process)."""

    def __init__(self, dst: str, storage_options: Mapping[str, Any] | None, run: str, part_rows: int,
                 part_bytes: int) -> None:
        self._dst, self._storage_options = dst, dict(storage_options or {}) or None
        self._run, self._part_rows, self._part_bytes = run, part_rows, part_bytes

    def setup(self) -> None:
        self._fs, _ = filesystem_for(self._dst, self._storage_options)

    def start_bundle(self) -> None:
        self._rows: list[Mapping[str, Any]] = []
        self._bytes = 0

    def process(self, row: Mapping[str, Any]):
        self._rows.append(row)
        self._bytes += len(row["bitstream"])
        if len(self._rows) >= self._part_rows or self._bytes >= self._part_bytes:
            yield self._stage()

    def finish_bundle(self):
        if self._rows:
            yield GlobalWindows.windowed_value(self._stage())

    def _stage(self) -> tuple[str, list[tuple[str, int]], dict[str, Any]]:
        rows, self._rows, self._bytes = self._rows, [], 0
        name, sizes = stage_rows(self._dst, self._run, rows, filesystem=self._fs)
        return name, sizes, retries.take()


def cut_shards(parts: Iterable[tuple[str, list[tuple[str, int]], Any]], rows_per_shard: int,
               bytes_per_shard: int) -> list[dict[str, list[str]]]:
    """Staged parts (name, [(id, bitstream bytes)], ...) -> the shards, in id order, each as the
    staged part name -> ids of its rows.

    Rows are cut into shards in id order exactly as ArchiveWriter cuts them when given the rows in id
    order (the local engine): a shard ends once it holds ``rows_per_shard`` rows or
    ``bytes_per_shard`` bitstream bytes. An id staged twice (a runner that ran a task twice and kept
    both outputs) is taken once, from the first part by name."""
    where: dict[str, tuple[str, int]] = {}
    for name, sizes, *_ in sorted(parts, key=lambda part: part[0]):
        for rid, nbytes in sizes:
            where.setdefault(rid, (name, nbytes))
    shards: list[dict[str, list[str]]] = []
    rows, size = 0, 0
    for rid in sorted(where):
        name, nbytes = where[rid]
        if rows == 0:
            shards.append({})
        shards[-1].setdefault(name, []).append(rid)
        rows, size = rows + 1, size + nbytes
        if rows >= rows_per_shard or size >= bytes_per_shard:
            rows, size = 0, 0
    return shards


def _number_shards(parts, rows_per_shard: int, bytes_per_shard: int):
    yield from enumerate(cut_shards(parts, rows_per_shard, bytes_per_shard))


class _WriteShard(beam.DoFn):
    """(shard number, staged part name -> ids) -> (shard description, its ids, the storage retries
    its process counted since it last took them: this write's, ``retries.take``): the shard's rows
    read back from the staged parts (``staging.read_staged``), written with ``archive.write_shard``."""

    def __init__(self, dst: str, storage_options: Mapping[str, Any] | None, first_index: int) -> None:
        self._dst, self._storage_options, self._first = dst, dict(storage_options or {}) or None, first_index

    def setup(self) -> None:
        self._fs, _ = filesystem_for(self._dst, self._storage_options)

    def process(self, shard: tuple[int, Mapping[str, list[str]]]):
        number, selection = shard
        table = read_staged(self._dst, selection, filesystem=self._fs)
        # overwrite: a retried bundle rewrites the same rows under the same name
        info = write_shard(self._dst, self._first + number, table, overwrite=True, filesystem=self._fs)
        yield info, table.column("id").to_pylist(), retries.take()


class _FinishArchive(beam.DoFn):
    """Once every shard is written: the rejected table (merged with earlier runs') and the manifest."""

    def __init__(self, dst: str, storage_options: Mapping[str, Any] | None, manifest_extra: Mapping[str, Any],
                 launched: float | None, run: str) -> None:
        self._dst, self._storage_options = dst, dict(storage_options or {}) or None
        self._extra, self._launched, self._run = dict(manifest_extra), launched, run

    def process(self, shards: list[tuple[dict[str, Any], list[str], dict[str, Any]]], rejected: list[dict[str, Any]],
                counted: list[dict[str, Any]] = ()):
        gathered = retries.zero()  # the workers' retries: the shard writes', those taken by TakeRetries ...
        for seen in [s[2] for s in shards] + list(counted) + [retries.take()]:  # ... and this process's not taken yet
            gathered = retries.add(gathered, seen)
        fs, _ = filesystem_for(self._dst, self._storage_options)
        writer = ArchiveWriter(self._dst, filesystem=fs)  # counts its own calls from here
        for info, ids, _ in sorted(shards, key=lambda s: s[0]["name"]):
            writer.adopt_shard(info, ids)
        for row in sorted(rejected, key=lambda r: r["id"]):
            writer.add_rejected(row)
        extra = dict(self._extra)
        if self._launched is not None:
            extra["started_at"] = _dt.datetime.fromtimestamp(self._launched, _dt.timezone.utc).isoformat()
            extra["elapsed_s"] = round(time.time() - self._launched, 3)
        extra["worker_storage_retries"] = gathered
        manifest = writer.close(extra)
        try:  # every staged row is in a shard now; failing to remove them must not fail a written archive
            remove_staging(self._dst, self._run, filesystem=fs)
        except Exception as exc:  # noqa: BLE001 - the next writer that takes the lease removes them
            log.warning("could not remove the staged rows of run %s from %s (%s: %s); the next encode into it "
                        "removes them", self._run, redact_url(self._dst), type(exc).__name__, exc)
        retries.take()  # the writer's own calls are in the manifest: never taken into another one
        yield manifest


class WriteArchive(beam.PTransform):
    """Write ``{"archived": rows, "rejected": rows}`` as the archive ``dst``; outputs its manifest.

    Archived rows are written where they were encoded as staged parts under ``dst/_staging/<run>/``
    (``staging.stage_rows``, at most ``part_rows`` rows each); only their ids and sizes travel on,
    are gathered, and cut into shards of consecutive ids (``cut_shards``: the shard boundaries of
    the local engine for the same rows). Each shard is then read back from the staged parts and
    written by one worker with ``archive.write_shard``, under indexes after the shards already in
    ``dst``. Then one worker writes the rejected table (merged with earlier runs') and the manifest
    through ArchiveWriter, and removes the staged parts (a failed run leaves them to the next writer
    that takes the archive's lease, as ``encode_beam`` does: ``archive/cleanup.py``; ``encode_beam``
    also removes them itself when its run fails). ``manifest_extra`` are the engine's
    manifest keys (``plan.run_manifest``). So neither the runner nor any one worker holds more than
    a shard's rows: on FnApiRunner, whose launching process keeps every PCollection between stages,
    100,000 rows held for the cut cost that process 1.2 GB (results/scale/README.md).

    The manifest's ``storage_retries`` sum what the staging and shard writes, the writer of the
    manifest and the optional ``storage_retries`` input (``TakeRetries`` applied to the stages that
    read and encode; ``encode_beam`` does) counted (``transforms.retries``).
    """

    def __init__(self, dst: str, storage_options: Mapping[str, Any] | None = None, *,
                 rows_per_shard: int = DEFAULT_ROWS_PER_SHARD, bytes_per_shard: int = DEFAULT_BYTES_PER_SHARD,
                 manifest_extra: Mapping[str, Any] | None = None, launched: float | None = None,
                 run: str | None = None, part_rows: int = STAGED_PART_ROWS,
                 part_bytes: int = STAGED_PART_BYTES) -> None:
        super().__init__()
        if rows_per_shard < 1 or bytes_per_shard < 1 or part_rows < 1 or part_bytes < 1:
            raise ValueError("rows_per_shard, bytes_per_shard, part_rows and part_bytes must be positive")
        self._dst, self._storage_options = str(dst), graph_storage_options(storage_options)
        self._rows, self._bytes = rows_per_shard, bytes_per_shard
        self._extra = dict(manifest_extra or {"engine": ENGINE})
        self._launched = launched
        self._run = run or uuid.uuid4().hex  # names the staging folder (staging.staging_folder checks it)
        staging_folder(self._run)
        self._part_rows, self._part_bytes = part_rows, part_bytes

    def expand(self, rows):
        archived, rejected = rows[ARCHIVED], rows[REJECTED]
        fs, _ = filesystem_for(self._dst, self._storage_options)
        first_index = next_shard_index(self._dst, filesystem=fs)
        staged = archived | "Stage the rows where they were encoded" >> beam.ParDo(
            _StageRows(self._dst, self._storage_options, self._run, self._part_rows, self._part_bytes))
        shards = (staged
                  | "Gather the staged ids and sizes" >> beam.combiners.ToList()
                  | "Cut the ids into shards" >> beam.FlatMap(_number_shards, self._rows, self._bytes)
                  | "Spread the shards over the workers" >> beam.Reshuffle()
                  | "Write each shard" >> beam.ParDo(_WriteShard(self._dst, self._storage_options, first_index)))
        counted = [staged | "Take the staging retries" >> beam.Map(lambda part: part[2])]
        if rows.get(RETRIES) is not None:
            counted.append(rows[RETRIES])
        counted = tuple(counted) | "Gather the storage retries" >> beam.Flatten()
        return (shards
                | "Gather the shard descriptions" >> beam.combiners.ToList()
                | "Write the rejected table and manifest" >> beam.ParDo(
                    _FinishArchive(self._dst, self._storage_options, self._extra, self._launched, self._run),
                    beam.pvalue.AsList(rejected), beam.pvalue.AsList(counted)))
