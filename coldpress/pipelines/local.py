"""The local engine: encode, restore and verify archives in one process, with no cluster.

It is the engine the CLI uses by default and the reference the distributed engines are compared
with: it calls the same engine-neutral transforms (``coldpress.transforms``) and writes the same
archive files. Sources are read a few at a time in background threads (object stores are slow to
answer, local disks are not). Encoding runs in ``workers`` processes (default: one per CPU core for
the reference codecs; one for the learned codec, whose torch threads already use every core): each
worker loads the codec once, reads and encodes chunks of inputs, and the calling process adds the
rows to the archive in input order, so the archive (shards, their rows and order) is the one a
single process writes.

    manifest = encode_local("photos/", "s3://bucket/archive", bpp=0.05)
    paths = restore_local("s3://bucket/archive", "restored/", ids=["2024/img_0001.jpg"])
    report = verify_local("s3://bucket/archive")
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections import deque
from itertools import islice
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterable, Iterator, Mapping

from tqdm import tqdm

from coldpress.codec.base import Codec, check_bpp
from coldpress.codec.registry import rebuildable
from coldpress.errors import ColdpressError, EnvironmentFault
from coldpress.defaults import DEFAULT_CODEC, DEFAULT_RESTORE_FORMAT
from coldpress.transforms.archive import DEFAULT_ROWS_PER_SHARD, ArchiveWriter, open_archive
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
    decode_record,
    pixels_sha256,
    process_input,
    restore_record,
    restored_names,
    within_reference_decode,
)
from coldpress.transforms.faults import raise_if_environmental
from coldpress.transforms import retries
from coldpress.transforms.sources import filesystem_for, read_ahead

ENGINE = "local"
#: Rows decoded per Parquet batch when restoring or verifying a whole archive.
RESTORE_BATCH_ROWS = 16
#: Inputs per task of an encode worker process, and tasks in flight per worker (bounds the memory
#: of results waiting for an earlier, slower chunk).
WORKER_CHUNK = 32
WORKER_TASKS_AHEAD = 4


def cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's CPU set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_workers(codec: Codec) -> int:
    """Encode processes when ``workers`` is not given: one per core, except for the learned codec
    (one process: its torch threads use every core, and each process would hold its own model)."""
    return 1 if codec.name == "learned" else cpu_count()


# -- encode worker processes -----------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(codec: str | Codec, codec_options: dict[str, Any], bpp: float,
                 storage_options: dict[str, Any] | None, threads: int) -> None:
    if getattr(codec, "name", codec) == "learned":  # share the cores between the workers' torch threads
        import torch

        torch.set_num_threads(max(1, threads))
    _WORKER.update(codec=resolve_codec(codec, **codec_options), bpp=bpp, storage_options=storage_options)


def _encode_chunk(chunk: list[tuple[str, str]]) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """Read and encode one chunk of inputs in a worker: (status, row) per input, in order, and the
    storage retries its reads took (``transforms.retries``)."""
    codec, bpp, options = _WORKER["codec"], _WORKER["bpp"], _WORKER["storage_options"]
    before = retries.snapshot()
    results = [process_input(key, uri, data, codec, bpp) for uri, key, data in read_ahead(chunk, options)]
    return results, retries.since(before)


class _WorkerPool:
    """(status, row) for each input of ``todo``, in order, encoded by ``workers`` processes.

    Workers are forked (they inherit the loaded modules: no second import of the codecs) except for
    the learned codec, whose torch thread pools are not safe to fork: they are spawned. At most
    ``workers * WORKER_TASKS_AHEAD`` chunks are in flight. ``close()`` stops the workers.
    """

    def __init__(self, todo: list[tuple[str, str]], codec: Codec, bpp: float,
                 storage_options: Mapping[str, Any] | None, workers: int) -> None:
        if rebuildable(codec):  # workers rebuild it from its name and options, not from a pickled model
            spec: str | Codec = codec.name
            options = dict(codec.options())
        else:
            spec, options = codec, {}
        threads = max(1, cpu_count() // workers)
        method = "fork" if codec.name != "learned" and "fork" in multiprocessing.get_all_start_methods() else "spawn"
        self._chunks = (todo[i:i + WORKER_CHUNK] for i in range(0, len(todo), WORKER_CHUNK))
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                                         initializer=_init_worker,
                                         initargs=(spec, options, bpp, dict(storage_options or {}) or None, threads))
        #: Storage retries of the workers' reads so far (the driver's are counted where they happen).
        self.retries = retries.zero()
        self._pending: deque = deque(self._pool.submit(_encode_chunk, c)
                                     for c in islice(self._chunks, workers * WORKER_TASKS_AHEAD))

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            while self._pending:
                results, seen = self._pending.popleft().result()
                self.retries = retries.add(self.retries, seen)
                for chunk in self._chunks:
                    self._pending.append(self._pool.submit(_encode_chunk, chunk))
                    break
                yield from results
        except BrokenProcessPool as exc:
            raise EnvironmentFault(
                f"an encode worker process died ({exc}); it was killed from outside, most often for lack of "
                "memory: run the same command again with fewer --workers (the images archived so far are kept "
                "and only the rest are encoded)"
            ) from None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _progress(iterable: Iterable[Any] | None = None, *, total: int | None, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar on stderr; hidden when ``enabled`` is false or stderr is not a terminal."""
    return tqdm(iterable, total=total, desc=desc, unit="img", disable=None if enabled else True,
                file=sys.stderr, dynamic_ncols=True, leave=False)


@contextmanager
def _closing(pool: _WorkerPool | None) -> Iterator[None]:
    try:
        yield
    finally:
        if pool is not None:
            pool.close()


@leased
def encode_local(
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
    codec_options: Mapping[str, Any] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Encode every file under ``src`` into the archive ``dst``; return the archive's manifest.

    ``src`` and ``dst`` are local paths or fsspec URLs (``s3://bucket/prefix``); ``storage_options``
    go to fsspec for both. Each input is archived (one row, verified on write) or rejected (one row
    of the rejected table with the reason); bad input never stops the job.

    ``resume``: inputs whose id is already in ``dst`` are skipped and new rows go to new shards, so
    an interrupted or extended job can be run again. With ``resume=False`` ``dst`` must not hold an
    archive yet. ``strict``: after the archive is written, raise RejectedInputs (its ``manifest``
    attribute holds the manifest) when any input was rejected. ``codec_options`` build the codec
    (``get_codec(codec, **codec_options)``, e.g. ``{"model": "my-model.safetensors"}``). ``workers``:
    encode processes (default ``default_workers``: one per CPU core, one for the learned codec); the
    archive is the same for any number.
    """
    bpp = check_bpp(bpp)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a whole number of at least 1, got {workers!r}; pass e.g. 2")
    started = time.monotonic()
    the_codec = resolve_codec(codec, **dict(codec_options or {}))
    src, dst = str(src), str(dst)
    plan = plan_encode(src, dst, storage_options, resume=resume)
    todo = plan.todo
    workers = min(workers or default_workers(the_codec), max(1, -(-len(todo) // WORKER_CHUNK)))
    pool = _WorkerPool(todo, the_codec, bpp, storage_options, workers) if workers > 1 else None
    results: Iterable[tuple[str, dict[str, Any]]] = pool if pool is not None else (
        process_input(key, uri, data, the_codec, bpp) for uri, key, data in read_ahead(todo, storage_options))

    with _closing(pool), ArchiveWriter(dst, rows_per_shard=rows_per_shard, filesystem=plan.dst_fs) as writer:
        with _progress(total=len(todo), desc=f"encoding ({the_codec.name} @ {bpp} bpp)", enabled=progress) as bar:
            for status, row in results:
                if status == "archived":
                    writer.add(row)
                else:
                    writer.add_rejected(row)
                bar.set_postfix(archived=writer.archived, rejected=writer.rejected, refresh=False)
                bar.update()
        extra = {"worker_storage_retries": pool.retries} if pool is not None else {}
        manifest = writer.close(run_manifest(ENGINE, plan, the_codec, bpp, resume=resume, strict=strict,
                                             elapsed_s=time.monotonic() - started, workers=workers, **extra))
    check_strict(manifest, plan, strict)
    return manifest


def restore_local(
    archive: str,
    dst: str,
    *,
    ids: Iterable[str] | None = None,
    fmt: str = DEFAULT_RESTORE_FORMAT,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    region: Mapping[str, Any] | None = None,
    decoder: Any = None,
) -> list[str]:
    """Decode images of ``archive`` into files under ``dst``; return the paths written, sorted by id.

    ``ids`` None restores every row; otherwise only those ids (an id not in the archive raises
    ArchiveError before anything is written, and only the row groups holding them are read). Files
    are named from the ids (``restored_names``: folders kept, extension of ``fmt``). An image whose
    row does not decode is skipped, the others are written, then ArchiveError lists the failures.
    Ids whose names collide among those restored (``a.jpg`` and ``a.png`` both give ``a.png``) get a
    short hash of the id added to their names. Rasters restore as GeoTIFF (``records.restore_record``:
    fmt "auto", the default, writes a COG named .tif); ``region`` ({"window": (col, row, width,
    height)} or {"bbox": (minx, miny, maxx, maxy), "bbox_crs": ...}) restores only that part of each.
    ``decoder`` (a ``coldpress.codec.diffusion.DecoderChoice`` or a mapping of its fields) restores photos
    through the diffusion decoder (default: the coarse decoder).

    Restoring every row of a damaged archive (``ids`` None) reads it part by part
    (``archive.salvage``): the rows of every intact row group are written, and the rows of a damaged
    one are listed in the final ArchiveError by id (by the shard's id range when the ids themselves
    are unreadable); a damaged manifest or rejected table does not stop it.
    """
    archive, dst = str(archive), str(dst)
    fs, _ = filesystem_for(archive, storage_options)
    damaged: list[tuple[str, str]] = []
    unreadable = [0]  # rows of damaged parts whose ids cannot be read
    if ids is None:
        from coldpress.transforms.archive.salvage import salvage

        wanted = [rid for kind, item in salvage(archive, filesystem=fs, columns=["id"]) if kind == "rows"
                  for rid in item.column("id").to_pylist()]

        def salvaged() -> Iterator[Any]:
            for kind, item in salvage(archive, filesystem=fs, batch_size=RESTORE_BATCH_ROWS):
                if kind == "rows":
                    yield item
                elif item.ids:
                    damaged.extend((rid, item.describe()) for rid in item.ids)
                elif item.rows and not item.where.startswith("_"):
                    lo, hi = item.id_range or (None, None)
                    damaged.append((f"{lo}..{hi}" if lo is not None else item.where, item.describe()))
                    unreadable[0] += item.rows

        batches: Iterable[Any] = salvaged()
    else:
        arch = open_archive(archive, filesystem=fs)
        if isinstance(ids, str):
            raise TypeError("ids must be a list of ids, not a single string")
        wanted = sorted(set(ids))
        batches = arch.read(ids=wanted).to_batches(max_chunksize=RESTORE_BATCH_ROWS)
    total = len(wanted)
    names = restored_names(sorted(set(wanted)), fmt)
    written: list[tuple[str, str]] = []
    failures: list[tuple[str, str]] = []
    with _progress(total=total, desc="restoring", enabled=progress) as bar:
        for batch in batches:
            for row in batch.to_pylist():
                rid = row["id"]
                try:
                    target = restore_record(row, join_destination(dst, names[rid]), fmt, storage_options,
                                            region=region, decoder=decoder)
                    written.append((rid, target))
                except Exception as exc:  # noqa: BLE001 - sorted: a bad row is listed, anything else stops
                    reason = restore_failure(exc)
                    if reason is None:  # the destination or the environment, not the row: stop
                        raise_if_environmental(exc, f"restoring {rid!r} into {dst}")
                        raise
                    failures.append((rid, reason))
                bar.update()
    failures += [d for d in damaged if d[0] not in dict(failures)]
    total += len({rid for rid, _ in damaged if ".." not in rid} - set(wanted)) + unreadable[0]
    if failures:
        raise restore_failures_error(failures, total, len(written), archive, dst)
    return [target for _, target in sorted(written)]


def verify_local(
    archive: str, *, storage_options: Mapping[str, Any] | None = None, progress: bool = True
) -> dict[str, Any]:
    """Check every row of ``archive``: bitstream checksum, full decode, decoded pixels vs ``recon_sha256``.

    Returns ``{"archive", "rows", "ok", "failures": [{"id", "problem"}], "rejected"}``; nothing is
    raised for a bad row (an unreadable shard raises ArchiveError). A row fails when its bitstream's
    sha256 differs from ``bitstream_sha256`` (the bytes changed), when it does not decode (container
    checksum, format, missing codec or model), when the decoded pixels' sha256 differs from
    ``recon_sha256`` (the decoder's output changed since the row was written), or when its id
    appears more than once in the archive. A row of a float32 model (v3 on) whose pixels differ from the
    recorded ones is decoded again beside the float64 reference synthesis: within one level of it, the
    row is intact and was written on another kind of device (float32 decoders round a few samples the
    other way there; the reproducibility contract allows one level), listed in ``"within_one_level"``.

    A damaged archive is read part by part (``archive.salvage``): a damaged manifest, shard footer,
    row group or rejected table is listed in ``"damaged"`` (one text each) and every row it held
    fails by id (``"id"`` is the id range of the shard when the ids themselves are unreadable); the
    rows of every intact part are still checked.
    """
    from coldpress.errors import ArchiveError
    from coldpress.transforms.archive.salvage import salvage

    archive = str(archive)
    fs, _ = filesystem_for(archive, storage_options)
    try:
        arch = open_archive(archive, filesystem=fs)
        path, total = arch.path, arch.num_rows
    except ArchiveError:  # a damaged manifest or footer: salvage says which, the rest is checked
        arch, path, total = None, archive, None
    failures: list[dict[str, str]] = []
    damaged: list[str] = []
    near: list[str] = []  # ids whose pixels are another kind of device's (float32 models)
    seen: set[str] = set()
    rows = unreadable = 0  # rows read and checked; rows of damaged parts
    with _progress(total=total, desc="verifying", enabled=progress) as bar:
        for kind, item in salvage(archive, filesystem=fs, batch_size=RESTORE_BATCH_ROWS):
            if kind == "damage":
                damaged.append(item.describe())
                if item.ids:
                    unreadable += len(item.ids)
                    failures += [{"id": rid, "problem": item.describe()} for rid in item.ids]
                elif item.rows != 0:  # a shard part whose ids are unreadable, or a side file
                    lo, hi = item.id_range or (None, None)
                    unreadable += item.rows or 0
                    failures.append({"id": f"{lo}..{hi}" if lo is not None else item.where, "problem": item.describe()})
                continue
            for row in item.to_pylist():
                rows += 1
                rid = row["id"]
                bar.update()
                if rid in seen:
                    failures.append({"id": rid, "problem": "this id appears in more than one row; remove the "
                                     "duplicate shard or re-encode the archive into a new destination"})
                    continue
                seen.add(rid)
                try:
                    pixels = decode_record(row)
                except Exception as exc:  # noqa: BLE001 - a decoder crash is a failed row, not a crash
                    # ... unless the environment failed (GPU, driver, disk, network): not a damaged row.
                    raise_if_environmental(exc, f"verifying {rid!r} of {archive}")
                    problem = str(exc) if isinstance(exc, ColdpressError) else (
                        f"decoding failed unexpectedly ({type(exc).__name__}: {exc})")
                    failures.append({"id": rid, "problem": problem})
                    continue
                recorded = row.get("recon_sha256")
                if recorded and pixels_sha256(pixels) != recorded:
                    if within_reference_decode(row):
                        near.append(rid)  # a float32 decode on another kind of device: within the contract
                        continue
                    failures.append({
                        "id": rid,
                        "problem": (
                            "the bitstream is intact but decodes to different pixels than when it was "
                            f"written (codec version then: {row.get('codec_version') or 'unknown'}); the "
                            "decoder changed: restore with the coldpress and codec versions recorded in the row"
                        ),
                    })
    try:
        rejected = arch.rejected().num_rows if arch is not None else None
    except (ArchiveError, ValueError):  # a damaged footer can fail to decode as text
        rejected = None  # listed in "damaged"
    return {
        "archive": path,
        "rows": rows + unreadable,
        "ok": rows - (len(failures) - len([d for d in failures if d["problem"] in damaged])),
        "failures": failures,
        "damaged": damaged,
        "within_one_level": near,
        "rejected": rejected,
    }
