"""WriteArchive: archived rows cut into deterministic shards, then the rejected table and the manifest,
which counts the storage retries of every worker (``TakeRetries``, ``transforms.retries``)."""

from __future__ import annotations

import bisect
import datetime as _dt
import time
from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from coldpress.transforms import retries
from coldpress.transforms.archive import (DEFAULT_BYTES_PER_SHARD, DEFAULT_ROWS_PER_SHARD, ArchiveWriter,
    next_shard_index, write_shard)
from coldpress.transforms.sources import filesystem_for
from coldpress.pipelines.beam.options import ENGINE, ARCHIVED, REJECTED, RETRIES, graph_storage_options


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


class _ShardStarts(beam.CombineFn):
    """(id, bitstream bytes) of every archived row -> the first id of each shard, sorted.

    Rows are cut into shards in id order exactly as ArchiveWriter cuts them: a shard ends once it
    holds ``rows_per_shard`` rows or ``bytes_per_shard`` bitstream bytes. The accumulator holds one
    (id, size) pair per row (as ArchiveWriter holds the ids of its run).
    """

    def __init__(self, rows_per_shard: int, bytes_per_shard: int) -> None:
        self._rows, self._bytes = rows_per_shard, bytes_per_shard

    def create_accumulator(self):
        return []

    def add_input(self, accumulator, item):
        accumulator.append(item)
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = []
        for acc in accumulators:
            merged.extend(acc)
        return merged

    def extract_output(self, accumulator):
        starts, rows, size = [], 0, 0
        for rid, nbytes in sorted(accumulator):
            if rows == 0:
                starts.append(rid)
            rows, size = rows + 1, size + nbytes
            if rows >= self._rows or size >= self._bytes:
                rows, size = 0, 0
        return starts


def _shard_of(row: Mapping[str, Any], starts: list[str]) -> tuple[int, Mapping[str, Any]]:
    return bisect.bisect_right(starts, row["id"]) - 1, row


class _WriteShard(beam.DoFn):
    """(shard number, rows) -> (shard description, its ids, the storage retries its process counted
    since it last took them: this write's, ``retries.take``), written with ``archive.write_shard``."""

    def __init__(self, dst: str, storage_options: Mapping[str, Any] | None, first_index: int) -> None:
        self._dst, self._storage_options, self._first = dst, dict(storage_options or {}) or None, first_index

    def setup(self) -> None:
        self._fs, _ = filesystem_for(self._dst, self._storage_options)

    def process(self, shard: tuple[int, Iterable[Mapping[str, Any]]]):
        number, rows = shard
        rows = list(rows)
        # overwrite: a retried bundle rewrites the same rows under the same name
        info = write_shard(self._dst, self._first + number, rows, overwrite=True, filesystem=self._fs)
        yield info, sorted(row["id"] for row in rows), retries.take()


class _FinishArchive(beam.DoFn):
    """Once every shard is written: the rejected table (merged with earlier runs') and the manifest."""

    def __init__(self, dst: str, storage_options: Mapping[str, Any] | None, manifest_extra: Mapping[str, Any],
                 launched: float | None) -> None:
        self._dst, self._storage_options = dst, dict(storage_options or {}) or None
        self._extra, self._launched = dict(manifest_extra), launched

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
        retries.take()  # the writer's own calls are in the manifest: never taken into another one
        yield manifest


class WriteArchive(beam.PTransform):
    """Write ``{"archived": rows, "rejected": rows}`` as the archive ``dst``; outputs its manifest.

    Archived rows are cut into shards of consecutive ids (as ArchiveWriter cuts them: same shard
    boundaries as the local engine for the same rows), grouped, and each shard is written by one
    worker with ``archive.write_shard``, under indexes after the shards already in ``dst``. Then one
    worker writes the rejected table (merged with earlier runs') and the manifest through
    ArchiveWriter. ``manifest_extra`` are the engine's manifest keys (``plan.run_manifest``).

    The manifest's ``storage_retries`` sum what the shard writes, the writer of the manifest and
    the optional ``storage_retries`` input (``TakeRetries`` applied to the stages that read and
    encode; ``encode_beam`` does) counted (``transforms.retries``).
    """

    def __init__(self, dst: str, storage_options: Mapping[str, Any] | None = None, *,
                 rows_per_shard: int = DEFAULT_ROWS_PER_SHARD, bytes_per_shard: int = DEFAULT_BYTES_PER_SHARD,
                 manifest_extra: Mapping[str, Any] | None = None, launched: float | None = None) -> None:
        super().__init__()
        if rows_per_shard < 1 or bytes_per_shard < 1:
            raise ValueError("rows_per_shard and bytes_per_shard must be positive")
        self._dst, self._storage_options = str(dst), graph_storage_options(storage_options)
        self._rows, self._bytes = rows_per_shard, bytes_per_shard
        self._extra = dict(manifest_extra or {"engine": ENGINE})
        self._launched = launched

    def expand(self, rows):
        archived, rejected = rows[ARCHIVED], rows[REJECTED]
        counted = rows.get(RETRIES)
        fs, _ = filesystem_for(self._dst, self._storage_options)
        first_index = next_shard_index(self._dst, filesystem=fs)
        starts = (archived
                  | "Measure each row" >> beam.Map(lambda row: (row["id"], len(row["bitstream"])))
                  | "Cut the ids into shards" >> beam.CombineGlobally(_ShardStarts(self._rows, self._bytes)))
        shards = (archived
                  | "Assign each row its shard" >> beam.Map(_shard_of, beam.pvalue.AsSingleton(starts))
                  | "Group the rows of each shard" >> beam.GroupByKey()
                  | "Write each shard" >> beam.ParDo(_WriteShard(self._dst, self._storage_options, first_index)))
        return (shards
                | "Gather the shard descriptions" >> beam.combiners.ToList()
                | "Write the rejected table and manifest" >> beam.ParDo(
                    _FinishArchive(self._dst, self._storage_options, self._extra, self._launched),
                    beam.pvalue.AsList(rejected), *([beam.pvalue.AsList(counted)] if counted is not None else [])))
