"""The Ray engine's encode: encode actors that read their own inputs, a shard-writing Datasink, ``encode_ray``."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import ActorPoolStrategy
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from coldpress.codec.base import Codec, check_bpp
from coldpress.defaults import DEFAULT_CODEC
from coldpress.transforms.archive import DEFAULT_ROWS_PER_SHARD, ArchiveWriter, next_shard_index, write_shard
from coldpress.transforms.archive.lease import leased
from coldpress.transforms.plan import check_strict, plan_encode, resolve_codec, run_manifest
from coldpress.transforms.records import process_input
from coldpress.transforms.schema import ARCHIVE_SCHEMA
from coldpress.transforms import retries
from coldpress.transforms.sources import filesystem_for, read_ahead
from coldpress.pipelines.ray.cluster import (ENGINE, DEFAULT_BATCH_SIZE, REFERENCE_BATCH_SIZE, MAX_BLOCK_ROWS,
    BLOCKS_PER_ACTOR, IO_TASK_CONCURRENCY, IO_TASK_CPUS, connect, actor_resources, _configure, _job_error,
    _threads_for, _codec_spec)

# The encode stage's output: archive columns (nullable: rejected rows fill only id, source_uri and
# created_at) plus the rejection reason, null for archived rows.
# The first row of each batch also carries, as JSON, the storage retries its reads took (transforms.retries).
_ENCODED_SCHEMA = pa.schema([f.with_nullable(True) for f in ARCHIVE_SCHEMA] + [pa.field("reason", pa.string()),
                                                                            pa.field("storage_retries", pa.string())])


def encode_block_rows(inputs: int, actors: int, batch: int) -> int:
    """Inputs per block of the encode stage: enough blocks for every actor to get BLOCKS_PER_ACTOR
    (small jobs spread over the pool), at most MAX_BLOCK_ROWS inputs each (large jobs: about 100
    blocks per 100,000 inputs instead of one per batch), and never fewer than a batch."""
    spread = math.ceil(inputs / max(1, actors * BLOCKS_PER_ACTOR))
    return max(batch, min(MAX_BLOCK_ROWS, spread))


class _Encoder:
    """Encode stage: one codec per actor, loaded once; each batch of sources is read (in threads)
    and every input becomes an archived or rejected row."""

    def __init__(self, codec: str, codec_options: dict[str, Any], bpp: float, cpus: float, gpus: float,
                 storage_options: dict[str, Any] | None = None) -> None:
        if codec == "learned":
            import torch  # the codec loads it anyway: set its threads before the model loads

            torch.set_num_threads(max(1, int(cpus)))
        if gpus > 0 and codec == "learned":
            codec_options = {**codec_options, "device": "cuda"}
        self.codec = resolve_codec(codec, **codec_options)
        _threads_for(cpus)
        self.bpp = bpp
        self.storage_options = storage_options

    def __call__(self, batch: pa.Table) -> pa.Table:
        sources = list(zip(batch.column("uri").to_pylist(), batch.column("key").to_pylist()))
        rows = []
        before = retries.snapshot()
        for uri, key, data in read_ahead(sources, self.storage_options):
            status, row = process_input(key, uri, data, self.codec, self.bpp)  # an unreadable source: rejected
            rows.append(row)  # a rejected row carries its reason; an archived one has none
        seen = retries.since(before)
        if rows and (seen["requests"] or seen["failed_attempts"]):
            rows[0] = {**rows[0], "storage_retries": json.dumps(seen)}
        return pa.Table.from_pylist(rows, schema=_ENCODED_SCHEMA)


class _ShardSink(Datasink):
    """Write stage: each write task's archived rows become shard ``base + task index``, rewritten
    (not duplicated) when Ray retries the task; rejected rows and shard descriptions go back to the
    driver, which writes the rejected table and the manifest once at the end."""

    def __init__(self, dst: str, storage_options: Mapping[str, Any] | None, base_index: int, rows_per_shard: int):
        self.dst = dst
        self.storage_options = dict(storage_options or {}) or None
        self.base_index = base_index
        self.rows_per_shard = rows_per_shard
        self.results: list[dict[str, Any]] = []

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_shard

    def get_name(self) -> str:
        return "WriteShards"

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        before = retries.snapshot()
        result: dict[str, Any] = {"task": ctx.task_idx, "shard": None, "ids": [], "rejected": [],
                                  "retries": retries.zero()}
        if not tables:
            return result
        table = pa.concat_tables(tables, promote_options="permissive")
        for text in table.column("storage_retries").drop_null().to_pylist():  # the encode actors' reads
            result["retries"] = retries.add(result["retries"], json.loads(text))
        archived_mask = table.column("reason").is_null()
        rejected = table.filter(pc.invert(archived_mask))
        archived = table.filter(archived_mask).select(ARCHIVE_SCHEMA.names)
        if archived.num_rows:
            fs, _ = filesystem_for(self.dst, self.storage_options)
            result["shard"] = write_shard(self.dst, self.base_index + ctx.task_idx, archived, overwrite=True,
                                          filesystem=fs)
            result["ids"] = archived.column("id").to_pylist()
        if rejected.num_rows:
            result["rejected"] = rejected.select(["id", "source_uri", "reason", "created_at"]).to_pylist()
        result["retries"] = retries.add(result["retries"], retries.since(before))  # and this task's writes
        return result

    def on_write_complete(self, write_result: Any) -> None:
        self.results = [r for r in write_result.write_returns if r is not None]


@leased
def encode_ray(
    src: str,
    dst: str,
    *,
    codec: str | Codec = DEFAULT_CODEC,
    bpp: float,
    storage_options: Mapping[str, Any] | None = None,
    resume: bool = True,
    strict: bool = False,
    progress: bool = True,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    address: str | None = None,
    num_actors: int | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float | None = None,
    batch_size: int | None = None,
    codec_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Encode every file under ``src`` into the archive ``dst`` on Ray; return the archive's manifest.

    Same contract as ``encode_local`` (resume, strict, rejected table, manifest), with the engine
    options: ``address`` of a Ray cluster to join (default: the one this process is connected to,
    else a new local instance); ``num_actors`` encode actors (default: one per GPU when the cluster
    has GPUs and the codec is learned, else one per ``cpus_per_actor`` CPUs); ``gpus_per_actor``
    (default 1 on a GPU cluster with the learned codec, else 0); ``cpus_per_actor`` (default: a
    node's CPUs, at most 8, for the learned codec on CPUs, else 1; see ``actor_resources``);
    ``batch_size`` inputs per actor call (default 4). Shards hold about ``rows_per_shard`` rows (one per write task).
    ``codec_options`` build the codec (``get_codec(codec, **codec_options)``: e.g. ``model`` a weights
    file, ``tile``, ``scale_search``, ``device``); the actors rebuild the same codec from them.
    """
    bpp = check_bpp(bpp)
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
    started = time.monotonic()
    the_codec = resolve_codec(codec, **dict(codec_options or {}))  # a bad name or missing model fails here
    codec_name, codec_options = _codec_spec(the_codec, codec_options)
    src, dst = str(src), str(dst)
    plan = plan_encode(src, dst, storage_options, resume=resume)
    connect(address, quiet=not progress)
    _configure(progress)
    actors, gpus, cpus = actor_resources(num_actors, gpus_per_actor, cpus_per_actor, uses_gpu=codec_name == "learned")
    batch = int(batch_size or (DEFAULT_BATCH_SIZE if codec_name == "learned" else REFERENCE_BATCH_SIZE))
    if batch < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    options = dict(storage_options or {}) or None

    with ArchiveWriter(dst, rows_per_shard=rows_per_shard, filesystem=plan.dst_fs) as writer:
        base = next_shard_index(dst, filesystem=plan.dst_fs)
        sink = _ShardSink(dst, options, base, rows_per_shard)
        if plan.todo:
            # Blocks of (uri, key) pairs (encode_block_rows), one actor call per `batch` of them; the
            # actors read the bytes themselves: no read task (and no worker process) per block.
            block_rows = encode_block_rows(len(plan.todo), actors, batch)
            uris = pa.array([uri for uri, _ in plan.todo], pa.string())
            keys = pa.array([key for _, key in plan.todo], pa.string())
            ds = ray.data.from_arrow([pa.table({"uri": uris[i:i + block_rows], "key": keys[i:i + block_rows]})
                                      for i in range(0, len(plan.todo), block_rows)])
            del uris, keys
            ds = ds.map_batches(
                _Encoder,
                fn_constructor_kwargs={"codec": codec_name, "codec_options": codec_options, "bpp": bpp,
                                       "cpus": cpus, "gpus": gpus, "storage_options": options},
                batch_size=batch, batch_format="pyarrow",
                compute=ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
                num_cpus=cpus, num_gpus=gpus,
            )
            try:
                ds.write_datasink(sink, ray_remote_args={"num_cpus": IO_TASK_CPUS}, concurrency=IO_TASK_CONCURRENCY)
            except Exception as exc:  # noqa: BLE001 - a failed job: the shards written so far stay
                raise _job_error("encode", exc, f"the shards written so far are kept in {dst}: fix the cause "
                                 "and run the same command again to encode only the rest") from exc
        for result in sorted(sink.results, key=lambda r: r["task"]):
            if result["shard"] is not None:
                writer.adopt_shard(result["shard"], result["ids"])
        gathered = retries.zero()
        for result in sink.results:
            gathered = retries.add(gathered, result.get("retries"))
            for row in result["rejected"]:
                writer.add_rejected(row)
        manifest = writer.close(run_manifest(
            ENGINE, plan, the_codec, bpp, resume=resume, strict=strict, elapsed_s=time.monotonic() - started,
            runner=f"Ray Data {ray.__version__}", ray_actors=actors, ray_gpus_per_actor=gpus,
            ray_cpus_per_actor=cpus, ray_batch_size=batch,
            ray_block_rows=encode_block_rows(len(plan.todo), actors, batch) if plan.todo else 0,
            worker_storage_retries=gathered,
        ))
    check_strict(manifest, plan, strict)
    return manifest
