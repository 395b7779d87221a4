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

Modules: ``cluster`` (connecting, actor pool sizes, job errors, shared settings), ``encode``
(``encode_ray``), ``restore`` (``restore_ray``; ``RowRestorer``, the one place where a restore
worker, of a job or of the service, turns a row into pixels or a file) and ``service``
(``RestoreService``).
"""

from coldpress.pipelines.ray.cluster import (
    BLOCKS_PER_ACTOR,
    DEFAULT_BATCH_SIZE,
    ENGINE,
    IO_TASK_CONCURRENCY,
    IO_TASK_CPUS,
    LEARNED_CPU_THREADS,
    MAX_BLOCK_ROWS,
    REFERENCE_BATCH_SIZE,
    RESTORE_READ_ROWS,
    SERVICE_NAMESPACE,
    _codec_spec,
    actor_resources,
    connect,
)
from coldpress.pipelines.ray.encode import encode_block_rows, encode_ray
from coldpress.pipelines.ray.restore import RowRestorer, archive_codecs, restore_ray
from coldpress.pipelines.ray.service import RestoreService, service_name

__all__ = [
    "BLOCKS_PER_ACTOR", "DEFAULT_BATCH_SIZE", "ENGINE", "IO_TASK_CONCURRENCY", "IO_TASK_CPUS", "LEARNED_CPU_THREADS",
    "MAX_BLOCK_ROWS", "REFERENCE_BATCH_SIZE", "RESTORE_READ_ROWS", "SERVICE_NAMESPACE", "RestoreService", "RowRestorer",
    "actor_resources", "archive_codecs", "connect", "encode_block_rows", "encode_ray", "restore_ray", "service_name",
    "_codec_spec",
]
