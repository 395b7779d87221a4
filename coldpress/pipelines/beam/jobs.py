"""The Beam jobs behind ``coldpress encode|restore --engine beam``: ``encode_beam`` and ``restore_beam``."""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from coldpress.codec.base import Codec, check_bpp
from coldpress.codec.registry import rebuildable
from coldpress.defaults import DEFAULT_CODEC, DEFAULT_RESTORE_FORMAT
from coldpress.errors import ArchiveError
from coldpress.transforms import retries
from coldpress.transforms.archive import DEFAULT_ROWS_PER_SHARD, open_archive, read_manifest
from coldpress.transforms.archive.lease import leased
from coldpress.transforms.archive.staging import remove_staging
from coldpress.transforms.plan import (check_strict, join_destination, plan_encode, resolve_codec,
    restore_failures_error, run_manifest)
from coldpress.transforms.sources import filesystem_for, redact_url
from coldpress.pipelines.beam.options import (ENGINE, DEFAULT_RUNNER, DEFAULT_BATCH_SIZE, IMAGES, ARCHIVED,
    REJECTED, RESTORED, FAILED, RETRIES, graph_storage_options, pipeline_options, make_pipeline, _runner_name, _sharing)
from coldpress.pipelines.beam.read import InputListing, ReadImages, write_listing, remove_listing
from coldpress.pipelines.beam.encode import EncodeImages
from coldpress.pipelines.beam.write import TakeRetries, WriteArchive
from coldpress.pipelines.beam.restore import RestoreImages

log = logging.getLogger(__name__)
#: Further passes over the inputs a runner dropped without failing the job (see ``encode_beam``).
RUNNER_LOSS_PASSES = 2


@leased
def encode_beam(
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
    pipeline_args: Sequence[str] | PipelineOptions | None = None,
    codec_options: Mapping[str, Any] | None = None,
    max_batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """``encode_local`` as a Beam pipeline: same arguments, same archive, returns its manifest.

    The launcher plans the run (lists SRC, skips ids already archived: ``plan.plan_encode``) and
    checks the codec loads, then runs ReadImages -> EncodeImages -> WriteArchive on the runner of
    ``pipeline_args`` (default: FnApiRunner in this process, see ``pipeline_options``) and waits.
    The planned inputs do not travel in the job graph: the launcher writes them as an input listing
    under ``DST/_inputs/`` (``write_listing``, JSON lines, 10,000 inputs per part file) that the
    pipeline reads, and removes it when the job ends; the graph holds only the part names. The
    launcher holds the plan itself (about 200 bytes per input). ``progress`` is
    accepted for the local engine's signature; the runner reports progress itself.
    """
    bpp = check_bpp(bpp)
    storage_options = graph_storage_options(storage_options)  # no credential travels in the job graph
    launched = time.time()
    started = time.monotonic()
    options = pipeline_options(pipeline_args)
    codec_options = dict(codec_options or {})
    the_codec = resolve_codec(codec, **codec_options)  # a bad name or missing model fails here, not in a worker
    large_model, copies = _sharing(options, the_codec, codec_options)
    runner = options.view_as(StandardOptions).runner
    runner_name = runner if isinstance(runner, str) else type(runner).__name__
    threads = None
    direct = options.view_as(DirectOptions)
    if _runner_name(options) == DEFAULT_RUNNER.lower() and direct.direct_running_mode == "multi_processing":
        threads = max(1, multiprocessing.cpu_count() // max(1, direct.direct_num_workers or multiprocessing.cpu_count()))
    # Workers rebuild the codec from its name and options (a model file, tile, scale search: Codec.options);
    # an instance of an unregistered codec class travels pickled.
    if rebuildable(the_codec):
        codec_spec: str | Codec = the_codec.name
        codec_options = {**the_codec.options(), **codec_options}
    else:
        codec_spec = the_codec
    # Every planned input must come back archived or rejected. A runner that drops elements without
    # failing the job (FnApiRunner's multi_processing mode did, now and then, at 100,000 inputs:
    # results/scale/README.md; see also make_pipeline) is caught here by the counts, and the inputs it dropped are encoded by
    # another pass over what is still missing, as a resumed run would; the manifest says how many.
    lost_by_pass: list[int] = []
    first_plan, archived_total = None, 0
    for attempt in range(1 + RUNNER_LOSS_PASSES):
        plan = plan_encode(str(src), str(dst), storage_options, resume=resume or attempt > 0)
        first_plan = first_plan or plan
        extra = run_manifest(ENGINE, plan, the_codec, bpp, resume=resume, strict=strict,
                             elapsed_s=0.0, runner=runner_name, large_model=large_model)
        extra["run_id"] = uuid.uuid4().hex  # tells this pass's manifest from an earlier one left on disk
        if lost_by_pass:
            extra["runner_lost_inputs"] = list(lost_by_pass)
        manifest = _encode_pass(options, plan, storage_options, the_codec, codec_spec, codec_options, bpp,
                                max_batch_size, large_model, copies, threads, str(dst), rows_per_shard, extra, launched)
        if manifest.get("run_id") != extra["run_id"]:  # the runner dropped the manifest's own input too
            lost = len(plan.todo) or 1
        else:
            archived_total += int(manifest.get("archived") or 0)
            lost = len(plan.todo) - int(manifest.get("archived") or 0) - int(manifest.get("rejected") or 0)
        if lost <= 0:
            break
        lost_by_pass.append(lost)
        log.warning("the Beam runner %s dropped %d of %d input(s) without an error (neither archived nor rejected); "
                    "encoding them in another pass", runner_name, lost, len(plan.todo))
    else:
        again = "run the same command again" if resume else "run the command again without --no-resume"
        raise ArchiveError(
            f"the Beam runner {runner_name} dropped inputs without an error in {len(lost_by_pass)} passes "
            f"({', '.join(map(str, lost_by_pass))} inputs): what it archived is kept in {dst}; {again} "
            "to encode the rest, or choose another runner or running mode (e.g. "
            "--beam-option=--direct_num_workers=1, or --engine local or ray)")
    if lost_by_pass:  # what this call did, over its passes (the file's manifest describes the last pass)
        manifest = {**manifest, "archived": archived_total, "skipped": first_plan.skipped,
                    "inputs_seen": len(first_plan.sources)}
    manifest.setdefault("launcher_elapsed_s", round(time.monotonic() - started, 3))
    check_strict(manifest, first_plan, strict)
    return manifest


def _encode_pass(options: PipelineOptions, plan: Any, storage_options: Mapping[str, Any] | None, the_codec: Codec,
                 codec_spec: str | Codec, codec_options: dict[str, Any], bpp: float, max_batch_size: int,
                 large_model: bool, copies: int | None, threads: int | None, dst: str, rows_per_shard: int,
                 extra: dict[str, Any], launched: float) -> dict[str, Any]:
    """One run of the encode pipeline over ``plan.todo``; the manifest it wrote."""
    listing, listing_folder = write_listing(plan.todo, dst, storage_options)
    try:
        _run_encode(options, listing, storage_options, the_codec, codec_spec, codec_options, bpp, max_batch_size,
                    large_model, copies, threads, dst, rows_per_shard, extra, launched)
    finally:  # each a courtesy: a failure to clean never hides the run's outcome (the next writer cleans)
        for what, remove in (("input listing", lambda: remove_listing(listing_folder, dst, storage_options)),
                             ("staged rows", lambda: remove_staging(dst, extra["run_id"], storage_options))):
            try:
                remove()  # the staged rows: a failed run's (a finished run removed its own)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not remove this run's %s from %s (%s: %s); the next encode into it removes them",
                            what, redact_url(dst), type(exc).__name__, exc)
    # The workers wrote the archive through their own filesystems: what this one listed when it
    # planned the run is stale (s3fs caches listings; without this it finds no manifest).
    plan.dst_fs.invalidate_cache()
    manifest = read_manifest(dst, filesystem=plan.dst_fs)
    if manifest is None:  # pragma: no cover - the pipeline succeeded, so its last step wrote it
        raise ArchiveError(f"the Beam job finished but {dst} has no manifest; run the job again (it resumes)")
    return manifest


def _run_encode(options: PipelineOptions, listing: InputListing, storage_options: Mapping[str, Any] | None,
                the_codec: Codec, codec_spec: str | Codec, codec_options: dict[str, Any], bpp: float,
                max_batch_size: int, large_model: bool, copies: int | None, threads: int | None, dst: str,
                rows_per_shard: int, extra: dict[str, Any], launched: float) -> None:
    with make_pipeline(options) as p:
        encode_graph(p, listing, storage_options, the_codec, codec_spec, codec_options, bpp, max_batch_size,
                     large_model, copies, threads, dst, rows_per_shard, extra, launched)
        # The launcher's storage calls so far (planning, the graph) are not the workers': FnApiRunner in
        # memory runs the workers in this process, and they take its counts from here on (the job runs
        # when this block ends).
        retries.take()


def encode_graph(p: beam.Pipeline, listing: InputListing, storage_options: Mapping[str, Any] | None,
                 the_codec: Codec, codec_spec: str | Codec, codec_options: dict[str, Any], bpp: float,
                 max_batch_size: int, large_model: bool, copies: int | None, threads: int | None, dst: str,
                 rows_per_shard: int, extra: dict[str, Any], launched: float) -> None:
    """Add encode_beam's transforms to ``p``: what its job graph holds (``tests/test_beam_secrets.py``)."""
    read = p | "Read the planned sources" >> ReadImages(listing, storage_options)
    encoded = read[IMAGES] | f"Encode at {bpp:g} bpp with {the_codec.name}" >> EncodeImages(
        codec_spec, bpp, codec_options=codec_options, max_batch_size=max_batch_size,
        large_model=large_model, model_copies=copies, torch_threads=threads)
    rejected = (read[REJECTED], encoded[REJECTED]) | "Gather every rejection" >> beam.Flatten()
    # Fused with the reads and the encode: what storage made them retry, taken when each bundle ends.
    counted = encoded[ARCHIVED] | "Take the storage retries of the reads" >> beam.ParDo(TakeRetries())
    _ = ({ARCHIVED: encoded[ARCHIVED], REJECTED: rejected, RETRIES: counted}
         | "Write the archive" >> WriteArchive(dst, storage_options, rows_per_shard=rows_per_shard,
                                               manifest_extra=extra, launched=launched, run=extra.get("run_id")))


def restore_beam(
    archive: str,
    dst: str,
    *,
    ids: Iterable[str] | None = None,
    fmt: str = DEFAULT_RESTORE_FORMAT,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    pipeline_args: Sequence[str] | PipelineOptions | None = None,
    region: Mapping[str, Any] | None = None,
    decoder: Mapping[str, Any] | None = None,
) -> list[str]:
    """``restore_local`` as a Beam pipeline: same arguments and files (``region``: that part of each
    raster only; ``decoder``: photos through the diffusion decoder); returns the paths written, sorted by id.

    Absent ids raise ArchiveError before the pipeline starts. Rows that do not decode are skipped,
    the others written, then ArchiveError lists the failures; to bring them back to the launcher on
    any runner, the pipeline writes them to a hidden report file in ``dst``
    (``.coldpress-restore-<id>.json``), which is read and deleted.
    """
    archive, dst = str(archive), str(dst)
    if isinstance(ids, str):
        raise TypeError("ids must be a list of ids, not a single string")
    storage_options = graph_storage_options(storage_options)  # no credential travels in the job graph
    options = pipeline_options(pipeline_args)
    fs, _ = filesystem_for(archive, storage_options)
    arch = open_archive(archive, filesystem=fs)
    if ids is None:
        wanted = sorted(set(arch.read(columns=["id"]).column("id").to_pylist()))
    else:
        wanted = sorted(set(ids))
        arch.read(ids=wanted, columns=["id"])  # ArchiveError listing the absent ids, before any work
    report = join_destination(dst, f".coldpress-restore-{uuid.uuid4().hex}.json")
    with make_pipeline(options) as p:
        restored = p | "Restore the images" >> RestoreImages(archive, ids, dst, fmt=fmt, storage_options=storage_options,
                                                             region=region, decoder=decoder)
        written_files = restored[RESTORED] | "Gather the files written" >> beam.combiners.ToList()
        _ = (restored[FAILED]
             | "Gather the failures" >> beam.combiners.ToList()
             | "Report both to the launcher" >> beam.Map(_write_report, beam.pvalue.AsSingleton(written_files),
                                                         report=report, storage_options=storage_options))
    report_fs, report_path = filesystem_for(report, storage_options)
    try:
        result = json.loads(report_fs.cat_file(report_path))
    finally:
        try:
            report_fs.rm(report_path)
        except FileNotFoundError:
            pass
    written, failures = restore_outcome(result, wanted)
    if failures:
        raise restore_failures_error(sorted(failures), len(wanted), len(written), archive, dst)
    return written


def restore_outcome(report: Mapping[str, Any], wanted: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(paths written sorted by id, failures) from the pipeline's report: what was restored, not what
    was planned. A wanted id the report lists neither as restored nor as failed (elements a runner
    lost) is a failure, never a file the caller is told exists."""
    failures = [(str(rid), str(reason)) for rid, reason in report["failures"]]
    restored = {str(rid): str(path) for rid, path in report["restored"]}
    unaccounted = sorted(set(wanted) - set(restored) - {rid for rid, _ in failures})
    failures += [(rid, "the Beam job finished without restoring this image or reporting why; run the restore "
                  "again") for rid in unaccounted]
    return [restored[rid] for rid in sorted(restored)], failures


def _write_report(failures: list[tuple[str, str]], restored: list[tuple[str, str]], *, report: str,
                  storage_options: Mapping[str, Any] | None) -> None:
    """The restore's outcome for the launcher: the (id, path) of every file written, every failure."""
    fs, path = filesystem_for(report, dict(storage_options or {}) or None)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, json.dumps({"restored": sorted(restored), "failures": sorted(failures)}).encode())
