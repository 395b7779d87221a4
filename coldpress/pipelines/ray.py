"""The Ray engine: encode and restore archives on a Ray cluster (Ray Data), and a warm restore service.

It runs the same engine-neutral transforms as the local engine (``coldpress.transforms``) and
writes the same archive files; only the scheduling differs:

encode
    The driver plans the run like every engine (``transforms.plan.plan_encode``: list SRC, skip the
    ids already archived). Ray Data then runs two stages: *encode* actors
    (``compute=ActorPoolStrategy``, one per CPU by default: never more processes than the cluster
    has CPUs for them) load the codec once, keep it (on a GPU when they are given one), fetch the
    raw bytes of each batch of sources in threads (local disk or any fsspec URL; a source that
    cannot be read becomes a rejected row, it never fails a task) and run
    ``records.process_input`` on each input, so only the (uri, key) pairs and the encoded rows
    travel through the object store; a *write* stage (``_ShardSink``, a Datasink, at most
    ``IO_TASK_CONCURRENCY`` tasks at once) writes each write task's rows as one shard with the
    foundation's ``write_shard`` (same schema, row groups, atomic rename). The driver then writes
    the rejected table and the manifest once, through ``ArchiveWriter``. Inputs travel in blocks
    of ``encode_block_rows`` (a few per actor for small jobs, up to ``MAX_BLOCK_ROWS`` for large
    ones), so the per-block scheduling cost stays small next to the encoding at any count. (Reads
    used to be zero-CPU tasks of their own, one per 4 inputs: at 20,000 inputs Ray started
    hundreds of worker processes for them.)

    Shard names are deterministic: ``part-<base + task index>.parquet``, where ``base`` is the first
    free index when the run starts (``next_shard_index``) and the task index is the write task's
    index in the run. Ray retries a task that died (worker, actor or node lost) with the same
    arguments, so a retried write rewrites the same shard with the same rows (``overwrite=True``)
    instead of adding a second copy. A run that is stopped keeps every shard it completed; running
    it again skips their ids (resume), so the archive ends with every input exactly once.

restore
    The driver resolves the ids (all, or the requested ones: an absent id is an error before
    anything is written) and their file names (``records.restored_names``: no name escapes DST).
    Read tasks fetch the rows of a few ids each (``Archive.read(ids=...)`` reads only the row
    groups that can hold them); decoder actors decode and write the files.

service
    ``RestoreService``: a named, long-lived pool of decoder actors for one archive behind a small
    router actor. Decoders load the codec when they start and keep the archive open (listing and
    shard footers read once), so a request reads only the row groups of its ids and pays only the
    decode. (Ray Serve would add HTTP routing and replica autoscaling, but needs the ray[serve]
    extras; plain named actors give the same warm pool from the Python API and the CLI.)

    manifest = encode_ray("s3://bucket/photos", "s3://bucket/archive", codec="avif-half", bpp=0.05)
    paths = restore_ray("s3://bucket/archive", "restored/", ids=["2024/img_0001.jpg"])
    with RestoreService.start("s3://bucket/archive") as service:
        pixels = service.restore_pixels(["2024/img_0001.jpg"])["2024/img_0001.jpg"]
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import ActorPoolStrategy, DataContext
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from coldpress.codec.base import Codec, check_bpp
from coldpress.defaults import DEFAULT_CODEC, DEFAULT_RESTORE_FORMAT
from coldpress.errors import ArchiveError, ColdpressError, EnvironmentFault
from coldpress.transforms.archive import (
    DEFAULT_ROWS_PER_SHARD,
    ArchiveWriter,
    next_shard_index,
    open_archive,
    write_shard,
)
from coldpress.transforms.archive.lease import leased
from coldpress.transforms.plan import (
    check_strict,
    join_destination,
    plan_encode,
    resolve_codec,
    restore_failure,
    restore_failures_error,
    run_manifest,
)
from coldpress.transforms.records import (
    decode_region_record,
    is_raster_row,
    process_input,
    raster_file_bytes,
    restore_record,
    restored_names,
    with_extension,
    write_file_bytes,
    write_image,
)
from coldpress.transforms.faults import environment_cause
from coldpress.transforms.schema import ARCHIVE_SCHEMA
from coldpress.transforms.sources import filesystem_for, read_ahead

ENGINE = "ray"
log = logging.getLogger(__name__)

#: Inputs per call of an encode actor, and rows per call of a decoder actor, when not given (the
#: encode actors of a reference codec take REFERENCE_BATCH_SIZE: the learned codec's memory grows
#: with its batch, theirs does not).
DEFAULT_BATCH_SIZE = 4
REFERENCE_BATCH_SIZE = 32
#: Inputs per block of the encode stage: at most MAX_BLOCK_ROWS, and BLOCKS_PER_ACTOR blocks per
#: actor at least (see ``encode_block_rows``).
MAX_BLOCK_ROWS = 1024
BLOCKS_PER_ACTOR = 4
#: Read and write tasks (they reserve no CPU) running at once: bounded, so that they never start
#: more worker processes than this.
IO_TASK_CONCURRENCY = 4
#: Ids whose rows one restore read task fetches.
RESTORE_READ_ROWS = 32
#: Most CPUs (torch threads) given to one learned-codec actor on a cluster without GPUs.
LEARNED_CPU_THREADS = 8
#: CPUs reserved by read and write tasks: they wait on storage, the actors use the CPUs.
IO_TASK_CPUS = 0
#: Namespace of the restore service's named actors.
SERVICE_NAMESPACE = "coldpress"

# The encode stage's output: archive columns (nullable: rejected rows fill only id, source_uri and
# created_at) plus the rejection reason, null for archived rows.
_ENCODED_SCHEMA = pa.schema([f.with_nullable(True) for f in ARCHIVE_SCHEMA] + [pa.field("reason", pa.string())])


# -- Ray -------------------------------------------------------------------------------------------
def connect(address: str | None = None, *, num_cpus: int | None = None, object_store_memory: int | None = None,
            quiet: bool = False) -> None:
    """Join the Ray cluster at ``address`` ("auto", "ray://host:10001", "host:6379"), or start a
    local one (``num_cpus``: CPUs it offers, default all); nothing to do when Ray is already
    initialized in this process."""
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": not quiet,
                              "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, object_store_memory=object_store_memory, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ColdpressError(
            f"could not connect to {where} ({type(exc).__name__}: {exc}); check the address (`ray status` "
            "on the head node prints it), start a cluster with `ray start --head`, or (except for --service) "
            "leave --address out to run on a local Ray instance"
        ) from None


def _cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0) or 0)


def _cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1) or 1)


def _largest_node_cpus() -> float:
    cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    return max(cpus or [1.0]) or 1.0


def actor_resources(num_actors: int | None, gpus_per_actor: float | None, cpus_per_actor: float | None,
                    *, uses_gpu: bool) -> tuple[int, float, float]:
    """(actor pool size, GPUs per actor, CPUs per actor), filling in the defaults.

    A learned codec gets one GPU per actor and one actor per GPU when the cluster has GPUs. On CPUs
    it gets a node's CPUs (at most LEARNED_CPU_THREADS) per actor: torch's threads share one model
    and its memory, which is faster than one single-threaded actor per core (2.7 GB each on Kodak
    images). Reference codecs get one CPU per actor and one actor per CPU.
    """
    if cpus_per_actor is not None and cpus_per_actor <= 0:
        raise ValueError(f"cpus_per_actor must be positive, got {cpus_per_actor}; pass e.g. 1")
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if uses_gpu and _cluster_gpus() >= 1 else 0.0
    if gpus_per_actor < 0:
        raise ValueError(f"gpus_per_actor must be 0 or more, got {gpus_per_actor}")
    if cpus_per_actor is None:
        cpus_per_actor = float(min(_largest_node_cpus(), LEARNED_CPU_THREADS)) if uses_gpu and not gpus_per_actor else 1.0
    if num_actors is None:
        if gpus_per_actor > 0:
            num_actors = max(1, int(_cluster_gpus() / gpus_per_actor))
        else:
            num_actors = max(1, int(_cluster_cpus() / cpus_per_actor))
    if num_actors < 1:
        raise ValueError(f"num_actors must be at least 1, got {num_actors}")
    return int(num_actors), float(gpus_per_actor), float(cpus_per_actor)


def _configure(progress: bool) -> None:
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    ctx.enable_operator_progress_bars = bool(progress)
    ctx.print_on_execution_start = bool(progress)
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)


def _job_error(what: str, exc: BaseException, hint: str) -> ColdpressError:
    cause = exc
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:  # RayTaskError chain
        cause = cause.cause
    text = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
    environment = environment_cause(cause)
    if environment is not None:  # not the inputs' fault: say what to fix, keep the class
        return EnvironmentFault(f"the Ray {what} job stopped: {environment}; {hint}")
    return ColdpressError(f"the Ray {what} job failed ({type(cause).__name__}: {text}); {hint}")


def _threads_for(cpus: float) -> None:
    """Use as many torch threads as CPUs this actor holds (Ray sets OMP_NUM_THREADS, torch may not follow)."""
    try:
        import torch

        torch.set_num_threads(max(1, int(cpus)))
    except Exception:  # noqa: BLE001 - torch is optional for reference codecs
        pass


# -- encode ----------------------------------------------------------------------------------------
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
        _threads_for(cpus)
        if gpus > 0 and codec == "learned":
            codec_options = {**codec_options, "device": "cuda"}
        self.codec = resolve_codec(codec, **codec_options)
        self.bpp = bpp
        self.storage_options = storage_options

    def __call__(self, batch: pa.Table) -> pa.Table:
        sources = list(zip(batch.column("uri").to_pylist(), batch.column("key").to_pylist()))
        rows = []
        for uri, key, data in read_ahead(sources, self.storage_options):
            status, row = process_input(key, uri, data, self.codec, self.bpp)  # an unreadable source: rejected
            rows.append(row)  # a rejected row carries its reason; an archived one has none
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
        result: dict[str, Any] = {"task": ctx.task_idx, "shard": None, "ids": [], "rejected": []}
        if not tables:
            return result
        table = pa.concat_tables(tables, promote_options="permissive")
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
        return result

    def on_write_complete(self, write_result: Any) -> None:
        self.results = [r for r in write_result.write_returns if r is not None]


def _codec_spec(codec: str | Codec, codec_options: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(name, options) that rebuild ``codec`` in an actor: a model file, tile or scale-search setting
    of the launcher's codec reaches every actor (``Codec.options``)."""
    if isinstance(codec, Codec):
        return codec.name, {**codec.options(), **dict(codec_options or {})}
    return str(codec), dict(codec_options or {})


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
        for result in sink.results:
            for row in result["rejected"]:
                writer.add_rejected(row)
        manifest = writer.close(run_manifest(
            ENGINE, plan, the_codec, bpp, resume=resume, strict=strict, elapsed_s=time.monotonic() - started,
            runner=f"Ray Data {ray.__version__}", ray_actors=actors, ray_gpus_per_actor=gpus,
            ray_cpus_per_actor=cpus, ray_batch_size=batch,
            ray_block_rows=encode_block_rows(len(plan.todo), actors, batch) if plan.todo else 0,
        ))
    check_strict(manifest, plan, strict)
    return manifest


# -- restore ---------------------------------------------------------------------------------------
def _archive_codecs(arch: Any) -> list[str]:
    manifest = arch.manifest or {}
    names = {manifest.get("codec")} | {r.get("codec") for r in manifest.get("runs", []) if isinstance(r, dict)}
    return sorted(n for n in names if isinstance(n, str) and n)


def _warm(codecs: Iterable[str]) -> None:
    """Load the codecs an archive uses (decode_bitstream then finds them in the registry's cache)."""
    from coldpress.codec import get_codec

    for name in codecs:
        try:
            get_codec(name)
        except Exception as exc:  # noqa: BLE001 - the rows that need it fail with the reason
            log.warning("could not load codec %s: %s", name, exc)


def _read_rows(batch: pa.Table, archive: str, storage_options: dict[str, Any] | None) -> pa.Table:
    """Restore read stage: the archive rows of the batch's ids (only their row groups), with their names."""
    names = dict(zip(batch.column("id").to_pylist(), batch.column("name").to_pylist()))
    fs, _ = filesystem_for(archive, storage_options)
    table = open_archive(archive, filesystem=fs).read(ids=list(names))
    return table.append_column("name", pa.array([names[i] for i in table.column("id").to_pylist()], pa.string()))


class _Decoder:
    """Restore stage: decode rows and write their files; a row that fails is reported, not raised."""

    def __init__(self, dst: str, fmt: str, storage_options: dict[str, Any] | None, codecs: list[str],
                 cpus: float) -> None:
        _threads_for(cpus)
        _warm(codecs)
        self.dst, self.fmt, self.storage_options = dst, fmt, storage_options

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list] = {"id": [], "path": [], "error": [], "fatal": []}
        for row in batch.to_pylist():
            path = error = fatal = None
            try:
                path = restore_record(row, join_destination(self.dst, row["name"]), self.fmt, self.storage_options)
            except Exception as exc:  # noqa: BLE001 - classified: a bad row, or a bad destination
                reason = restore_failure(exc)
                if reason is None:  # the destination or the environment (a full disk, a lost GPU): stop
                    fatal = environment_cause(exc) or f"{type(exc).__name__}: {exc}"
                else:
                    error = reason
            out["id"].append(row["id"])
            out["path"].append(path)
            out["error"].append(error)
            out["fatal"].append(fatal)
        return pa.table(out, schema=pa.schema([(k, pa.string()) for k in out]))


def _wanted_ids(arch: Any, ids: Iterable[str] | None) -> list[str]:
    if ids is None:  # shard order: consecutive ids share row groups
        return list(dict.fromkeys(arch.read(columns=["id"]).column("id").to_pylist()))
    if isinstance(ids, str):
        raise TypeError("ids must be a list of ids, not a single string")
    wanted = sorted(set(ids))
    arch.read(ids=wanted, columns=["id"])  # ArchiveError listing absent ids, before anything is written
    return wanted


def restore_ray(
    archive: str,
    dst: str,
    *,
    ids: Iterable[str] | None = None,
    fmt: str = DEFAULT_RESTORE_FORMAT,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    address: str | None = None,
    num_actors: int | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float | None = None,
    batch_size: int | None = None,
) -> list[str]:
    """Decode images of ``archive`` into files under ``dst`` on Ray; return the paths written, sorted by id.

    Same contract as ``restore_local`` (ids or all, names from ``restored_names``, failures listed
    in one ArchiveError after the others are written), with the engine options of ``encode_ray``.
    """
    archive, dst = str(archive), str(dst)
    options = dict(storage_options or {}) or None
    fs, _ = filesystem_for(archive, options)
    arch = open_archive(archive, filesystem=fs)
    wanted = _wanted_ids(arch, ids)
    names = restored_names(sorted(wanted), fmt)
    if not wanted:
        return []
    connect(address, quiet=not progress)
    _configure(progress)
    actors, gpus, cpus = actor_resources(num_actors, gpus_per_actor, cpus_per_actor,
                                         uses_gpu="learned" in _archive_codecs(arch))
    batch = int(batch_size or DEFAULT_BATCH_SIZE)
    items = [{"id": rid, "name": names[rid]} for rid in wanted]
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / RESTORE_READ_ROWS)))
    ds = ds.map_batches(_read_rows, fn_kwargs={"archive": archive, "storage_options": options},
                        batch_size=RESTORE_READ_ROWS, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
                        concurrency=IO_TASK_CONCURRENCY)
    ds = ds.map_batches(
        _Decoder,
        fn_constructor_kwargs={"dst": dst, "fmt": fmt, "storage_options": options, "codecs": _archive_codecs(arch),
                               "cpus": cpus},
        batch_size=batch, batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
        num_cpus=cpus, num_gpus=gpus,
    )
    written: list[tuple[str, str]] = []
    failures: list[tuple[str, str]] = []
    fatal: list[str] = []
    try:
        for row in ds.iter_rows():
            if row["fatal"]:
                fatal.append(f"{row['id']}: {row['fatal']}")
            elif row["error"]:
                failures.append((row["id"], row["error"]))
            else:
                written.append((row["id"], row["path"]))
    except Exception as exc:  # noqa: BLE001
        raise _job_error("restore", exc, "the files written so far are complete; run the command again") from exc
    if fatal:
        raise ColdpressError(
            f"could not write restored images under {dst} ({fatal[0]}); check that the destination exists "
            "or can be created and that this job may write there, then run the restore again"
        )
    if failures:
        raise restore_failures_error(sorted(failures), len(wanted), len(written), archive, dst)
    return [path for _, path in sorted(written)]


# -- restore service -------------------------------------------------------------------------------
def service_name(archive: str) -> str:
    """The default name of the restore service of ``archive`` (stable for the same path or URL)."""
    text = str(archive).rstrip("/")
    if "://" not in text:
        text = os.path.abspath(text)
    return "coldpress-restore-" + hashlib.sha256(text.encode()).hexdigest()[:12]


class _ServiceDecoder:
    """One warm decoder of the service: the codecs loaded and the archive open (footers cached)."""

    def __init__(self, archive: str, storage_options: dict[str, Any] | None, cpus: float) -> None:
        _threads_for(cpus)
        self.archive, self.storage_options = archive, storage_options
        self._open()
        _warm(_archive_codecs(self.arch))

    def _open(self) -> None:
        fs, _ = filesystem_for(self.archive, self.storage_options)
        self.arch = open_archive(self.archive, filesystem=fs)

    def ready(self) -> bool:
        return True

    def restore(self, ids: list[str], fmt: str | None = None, region: dict[str, Any] | None = None
                ) -> dict[str, tuple[str, Any]]:
        """id -> ("ok", pixels) | ("file", (extension, bytes)) | ("error", reason) | ("missing", reason).

        Rasters asked for in a file format ``fmt`` come back as that file's bytes (a COG by default);
        ``region`` restores only a window or box of each raster, decoding only the tiles it overlaps."""
        table = self.arch.read(ids=ids, missing="ignore")
        if table.num_rows < len(set(ids)):  # the archive may have grown since the service started
            self._open()
            table = self.arch.read(ids=ids, missing="ignore")
        out: dict[str, tuple[str, Any]] = {}
        for row in table.to_pylist():
            try:
                if fmt is not None and is_raster_row(row):
                    out[row["id"]] = ("file", raster_file_bytes(row, fmt, region))
                else:
                    out[row["id"]] = ("ok", decode_region_record(row, region))
            except Exception as exc:  # noqa: BLE001
                out[row["id"]] = ("error", restore_failure(exc) or f"{type(exc).__name__}: {exc}")
        for rid in ids:
            out.setdefault(rid, ("missing", f"not in the archive at {self.archive}"))
        return out


class _ServiceRouter:
    """The named entry point of a service: spreads requests over its decoders."""

    def __init__(self, archive: str, storage_options: dict[str, Any] | None, num_decoders: int,
                 cpus_per_decoder: float, gpus_per_decoder: float, detached: bool) -> None:
        remote = ray.remote(_ServiceDecoder).options(
            num_cpus=cpus_per_decoder, num_gpus=gpus_per_decoder, max_restarts=-1, max_task_retries=-1,
            lifetime="detached" if detached else None,
        )
        self.archive = archive
        self.decoders = [remote.remote(archive, storage_options, cpus_per_decoder) for _ in range(num_decoders)]
        self.settings = {"archive": archive, "decoders": num_decoders, "cpus_per_decoder": cpus_per_decoder,
                         "gpus_per_decoder": gpus_per_decoder, "detached": detached}
        self._next = 0

    async def ready(self) -> dict[str, Any]:
        await asyncio.gather(*(d.ready.remote() for d in self.decoders))
        return self.settings

    async def restore(self, ids: list[str], fmt: str | None = None, region: dict[str, Any] | None = None
                      ) -> dict[str, tuple[str, Any]]:
        ids = sorted(set(ids))
        k = min(len(self.decoders), max(1, len(ids)))
        chunks = [ids[i * len(ids) // k:(i + 1) * len(ids) // k] for i in range(k)]  # contiguous: shared row groups
        start, self._next = self._next, (self._next + k) % len(self.decoders)
        refs = [self.decoders[(start + i) % len(self.decoders)].restore.remote(c, fmt, region)
                for i, c in enumerate(chunks) if c]
        out: dict[str, tuple[str, Any]] = {}
        for part in await asyncio.gather(*refs):
            out.update(part)
        return out

    def shutdown(self) -> None:
        for d in self.decoders:
            ray.kill(d, no_restart=True)


class RestoreService:
    """Client of a warm restore service: a named pool of decoder actors for one archive on Ray.

    ``RestoreService.start(archive)`` starts it (or finds the running one of that name);
    ``RestoreService.connect(archive)`` finds a running one. ``restore_pixels(ids)`` returns decoded
    arrays; ``restore(ids, dst, fmt)`` writes files under ``dst`` (named like every engine's, written
    by this process, so ``dst`` is local to the caller). ``shutdown()`` stops the actors. A service
    started with ``detached=True`` outlives the process that started it (the CLI's ``--service``).
    """

    def __init__(self, router: Any, name: str, archive: str) -> None:
        self._router, self.name, self.archive = router, name, archive

    @classmethod
    def start(cls, archive: str, *, name: str | None = None, storage_options: Mapping[str, Any] | None = None,
              num_decoders: int = 1, cpus_per_decoder: float | None = None, gpus_per_decoder: float | None = None,
              detached: bool = False, address: str | None = None) -> RestoreService:
        archive = str(archive)
        options = dict(storage_options or {}) or None
        fs, _ = filesystem_for(archive, options)
        arch = open_archive(archive, filesystem=fs)  # a missing archive fails here, with the reason
        connect(address, quiet=True)
        num_decoders, gpus_per_decoder, cpus_per_decoder = actor_resources(
            num_decoders, gpus_per_decoder, cpus_per_decoder, uses_gpu="learned" in _archive_codecs(arch))
        name = name or service_name(archive)
        router = ray.remote(_ServiceRouter).options(
            name=name, namespace=SERVICE_NAMESPACE, get_if_exists=True, num_cpus=0, max_restarts=-1,
            max_concurrency=64, lifetime="detached" if detached else None,
        ).remote(archive, options, num_decoders, cpus_per_decoder, gpus_per_decoder, detached)
        try:
            ray.get(router.ready.remote())
        except Exception as exc:  # noqa: BLE001
            raise _job_error("restore service", exc, "check the archive and the cluster's resources") from exc
        return cls(router, name, archive)

    @classmethod
    def connect(cls, archive: str, *, name: str | None = None, address: str | None = None) -> RestoreService:
        connect(address, quiet=True)
        name = name or service_name(str(archive))
        try:
            router = ray.get_actor(name, namespace=SERVICE_NAMESPACE)
        except ValueError:
            raise ColdpressError(
                f"no restore service {name!r} runs for {archive} on this Ray cluster; start one with "
                "RestoreService.start(archive) or `coldpress restore ARCHIVE DST --id ID --service`"
            ) from None
        return cls(router, name, str(archive))

    def info(self) -> dict[str, Any]:
        return ray.get(self._router.ready.remote())

    def _results(self, ids: Iterable[str], fmt: str | None = None, region: Mapping[str, Any] | None = None
                 ) -> tuple[list[str], dict[str, tuple[str, Any]]]:
        if isinstance(ids, str):
            raise TypeError("ids must be a list of ids, not a single string")
        wanted = sorted(set(ids))
        region = dict(region) if region else None
        results = ray.get(self._router.restore.remote(wanted, fmt, region)) if wanted else {}
        missing = [rid for rid in wanted if results[rid][0] == "missing"]
        if missing:
            shown = ", ".join(map(repr, missing[:20])) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise ArchiveError(
                f"{len(missing)} of {len(wanted)} requested id(s) are not in the archive at {self.archive}: "
                f"{shown}. Check the spelling, whether the input was rejected, or list the ids with "
                "`coldpress inspect --ids`."
            )
        return wanted, results

    def restore_pixels(self, ids: Iterable[str], region: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Decoded images by id (rasters: (H, W, bands) in their type; only ``region`` of each with a
        region); ArchiveError for absent ids or rows that do not decode."""
        wanted, results = self._results(ids, None, region)
        failures = [(rid, results[rid][1]) for rid in wanted if results[rid][0] == "error"]
        if failures:
            raise restore_failures_error(failures, len(wanted), len(wanted) - len(failures), self.archive, "memory")
        return {rid: results[rid][1] for rid in wanted}

    def restore(self, ids: Iterable[str], dst: str, fmt: str = DEFAULT_RESTORE_FORMAT,
                storage_options: Mapping[str, Any] | None = None, region: Mapping[str, Any] | None = None
                ) -> list[str]:
        """Write the images of ``ids`` under ``dst``; return the paths, sorted by id. Rasters are
        written as ``records.restore_record`` writes them (a COG by default), only ``region`` of
        each with a region ({"window": ...} or {"bbox": ..., "bbox_crs": ...})."""
        dst = str(dst)
        wanted, results = self._results(ids, fmt, region)
        names = restored_names(wanted, fmt)
        written, failures = [], []
        for rid in wanted:
            status, value = results[rid]
            if status not in ("ok", "file"):
                failures.append((rid, value))
                continue
            target = join_destination(dst, names[rid])
            if status == "file":
                ext, data = value
                target = with_extension(target, ext)
                write_file_bytes(data, target, dict(storage_options or {}) or None)
            else:
                write_image(value, target, fmt, dict(storage_options or {}) or None)
            written.append(target)
        if failures:
            raise restore_failures_error(failures, len(wanted), len(written), self.archive, dst)
        return written

    def shutdown(self) -> None:
        """Stop the decoders and the router."""
        try:
            ray.get(self._router.shutdown.remote())
        finally:
            ray.kill(self._router, no_restart=True)

    def __enter__(self) -> RestoreService:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
