"""The Apache Beam engine: encode and restore archives as Beam pipelines, on any Beam runner.

Four composite transforms do the work; each calls the engine-neutral transforms
(``coldpress.transforms``), which call the codec, so a Beam archive holds the same rows, bitstreams
and files as one written by the local engine::

    with beam.Pipeline(options=pipeline_options()) as p:
        read = p | "Read the images" >> ReadImages("s3://bucket/photos")
        encoded = read.images | "Encode them" >> EncodeImages("avif-half", bpp=0.05)
        rejected = (read.rejected, encoded.rejected) | "Gather rejections" >> beam.Flatten()
        {"archived": encoded.archived, "rejected": rejected} | "Write the archive" >> WriteArchive("s3://bucket/archive")

    restored = p | "Restore two images" >> RestoreImages("s3://bucket/archive", ["a.jpg", "b.png"], "restored/")

``encode_beam`` and ``restore_beam`` build and run those pipelines with the same arguments and
results as ``encode_local`` and ``restore_local``; ``coldpress encode|restore --engine beam`` calls
them. Pipeline options (``--runner`` and the runner's own) come as a list of Beam command-line
flags (``pipeline_args``; on the command line ``--beam-option=--runner=FlinkRunner``, repeated).

Choices, and why:

- **Local runner: FnApiRunner, pinned.** Beam 2.77's ``DirectRunner`` first tries the Prism runner,
  which downloads a Go binary from GitHub on first use (and falls back only after the fetch fails;
  behind a firewall that can hang). Without ``--runner`` the pipelines run on
  ``FnApiRunner``, Beam's in-process portable runner, the one ``DirectRunner`` falls back to:
  nothing is downloaded. ``--runner=DirectRunner``, ``PrismRunner``, ``FlinkRunner``,
  ``SparkRunner``, ``DataflowRunner`` pass through unchanged (see infra/beam/README.md).
- **Sources through fsspec, not fileio/Beam's S3 filesystem.** ``fileio.MatchFiles`` and
  ``ReadMatches`` resolve paths with Beam's own filesystems, whose S3 client is configured by
  separate pipeline options (``--s3_endpoint_url``, ``--s3_access_key_id``, ...) rather than the
  storage options, ``--endpoint-url`` and ``COLDPRESS_S3_ENDPOINT_URL`` every other part of
  coldpress uses (and the archive writer needs fsspec anyway), and they give no key relative to
  SRC, so ids and the hidden-file rule would have to be re-derived and could drift from the local
  and Ray engines. ``ReadImages`` keeps MatchFiles/ReadMatches' shape (match once, redistribute,
  read in parallel) with ``sources.list_sources`` and ``sources.read_bytes``: the same listing,
  ids and URIs as the other engines, and every filesystem fsspec reaches (s3, gs, az, ...).
- **Shards through write_shard, not WriteToParquet.** ``WriteToParquet`` has one compression codec
  for every column (the archive uses zstd-15 and zstd-1 for the bitstream), no dictionary,
  statistics or page-checksum settings per column, no row groups bounded by bitstream bytes, no
  sorting of rows by id nor per-file ``coldpress.bitstream_bytes`` metadata, and names its files
  ``prefix-SSSSS-of-NNNNN``. So ``WriteArchive`` groups rows into deterministic shards and writes
  each with the foundation's ``archive.write_shard`` (same writer options, sorted ids, atomic
  write-then-rename); a retried bundle rewrites the same shard under the same name.
- **Encoding through RunInference** with ``CodecModelHandler``: the codec is loaded once per worker
  process and shared by its threads, inputs are batched (``max_batch_size``), and with
  ``large_model`` (the default when the launcher sees a GPU; ``--large_model``/``--model_copies N``
  otherwise) one copy per machine serves every process, instead of one per process.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import json
import multiprocessing
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from coldpress.codec.base import Codec, check_bpp
from coldpress.codec.registry import rebuildable
from coldpress.defaults import DEFAULT_CODEC, DEFAULT_RESTORE_FORMAT
from coldpress.errors import ArchiveError, ColdpressError
from coldpress.transforms.archive import (
    DEFAULT_BYTES_PER_SHARD,
    DEFAULT_ROWS_PER_SHARD,
    ArchiveWriter,
    next_shard_index,
    open_archive,
    read_manifest,
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
from coldpress.transforms.records import process_input, restore_record, restored_names, unreadable_row
from coldpress.transforms.schema import ROW_GROUP_ROWS
from coldpress.transforms.faults import raise_if_environmental
from coldpress.transforms.sources import filesystem_for, list_sources, read_bytes

ENGINE = "beam"
#: Planned inputs per part file of a run's input listing (``write_listing``).
LISTING_PART_ROWS = 10_000
#: Folder of the archive where a running encode keeps its input listing (removed when it ends).
LISTING_DIR = "_inputs"
#: The runner used when the pipeline options name none: in-process, nothing downloaded.
DEFAULT_RUNNER = "FnApiRunner"
#: Inputs per RunInference batch (a batch is one call of the model, or one round trip to a shared one).
DEFAULT_BATCH_SIZE = 4
#: Tags of the outputs of ReadImages, EncodeImages and RestoreImages.
IMAGES, ARCHIVED, REJECTED, RESTORED, FAILED = "images", "archived", "rejected", "restored", "failed"


# -- pipeline options ------------------------------------------------------------------------------
class CodecSharingOptions(PipelineOptions):
    """Pipeline options of EncodeImages: how many copies of the codec a machine loads."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--large_model", dest="large_model", action="store_true", default=None,
            help="load one codec per machine, shared by all its worker processes (RunInference's "
            "large_model); default: on when the launching machine sees a CUDA GPU")
        parser.add_argument(
            "--no_large_model", dest="large_model", action="store_false",
            help="load one codec per worker process, even with a GPU")
        parser.add_argument(
            "--model_copies", type=int, default=None,
            help="codec copies per machine, shared by its worker processes (implies --large_model)")


def pipeline_options(pipeline_args: Sequence[str] | PipelineOptions | None = None) -> PipelineOptions:
    """Beam pipeline options from command-line flags (``["--runner=FlinkRunner", ...]``).

    Without ``--runner`` the pipeline runs on ``FnApiRunner`` in this process (Beam's DirectRunner
    would first try to download the Prism runner). For FnApiRunner, unless ``--direct_num_workers``
    or ``--direct_running_mode`` is given, one worker process runs per CPU core
    (``multi_processing``): the codecs hold the GIL for part of each image.
    """
    if isinstance(pipeline_args, PipelineOptions):
        options = pipeline_args
        flags: list[str] = []
    else:
        if isinstance(pipeline_args, str):
            raise TypeError("pipeline_args must be a list of flags such as ['--runner=FlinkRunner'], not one string")
        flags = [str(a) for a in (pipeline_args or [])]
        bad = [a for a in flags if not a.startswith("--")]
        if bad:
            raise ColdpressError(
                f"Beam pipeline options must be flags starting with '--', got {bad[0]!r}; pass e.g. "
                "--beam-option=--runner=FlinkRunner --beam-option=--flink_master=host:8081"
            )
        options = PipelineOptions(flags)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    if _runner_name(options) == DEFAULT_RUNNER.lower():
        given = {a.split("=", 1)[0] for a in flags}
        direct = options.view_as(DirectOptions)
        if not given & {"--direct_num_workers", "--direct_running_mode"} and not isinstance(pipeline_args, PipelineOptions):
            direct.direct_num_workers = multiprocessing.cpu_count()
            direct.direct_running_mode = "multi_processing" if direct.direct_num_workers > 1 else "in_memory"
        if "--default_sdk_harness_log_level" not in given:  # worker processes log every bundle at INFO
            options.view_as(beam.options.pipeline_options.WorkerOptions).default_sdk_harness_log_level = "WARNING"
    return options


def make_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A pipeline on the runner of ``options``. FnApiRunner is built as DirectRunner builds it, with
    the options in its provision info, so that its worker processes see them (log level, ...)."""
    if _runner_name(options) != DEFAULT_RUNNER.lower():
        return beam.Pipeline(options=options)
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return beam.Pipeline(runner=fn_runner.FnApiRunner(provision_info=provision), options=options)


def _runner_name(options: PipelineOptions) -> str:
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.rsplit(".", 1)[-1].lower()


def _sharing(options: PipelineOptions, codec: str | Codec, codec_options: Mapping[str, Any]) -> tuple[bool, int | None]:
    """(large_model, model_copies) from the options; large_model defaults to "the launcher has a GPU"."""
    sharing = options.view_as(CodecSharingOptions)
    copies = sharing.model_copies
    if copies is not None and copies < 1:
        raise ColdpressError(f"--model_copies must be at least 1, got {copies}")
    if sharing.large_model is not None:
        return bool(sharing.large_model) or copies is not None, copies
    device = str(codec_options.get("device") or getattr(codec, "device", "") or "")
    name = codec.name if isinstance(codec, Codec) else str(codec)
    if name != "learned" or device == "cpu":
        return copies is not None, copies
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        gpu = False
    return gpu or copies is not None, copies


# -- reading ---------------------------------------------------------------------------------------
class _ListSources(beam.DoFn):
    """SRC -> its (uri, key) pairs, sorted (``sources.list_sources``: hidden files left out)."""

    def __init__(self, storage_options: Mapping[str, Any] | None) -> None:
        self._storage_options = dict(storage_options or {}) or None

    def process(self, src: str):
        yield from list_sources(src, self._storage_options)


class _ReadSource(beam.DoFn):
    """(uri, key) -> (key, uri, bytes); a source that cannot be read leaves as a rejected row."""

    def __init__(self, storage_options: Mapping[str, Any] | None) -> None:
        self._storage_options = dict(storage_options or {}) or None

    def process(self, source: tuple[str, str]):
        uri, key = source
        try:
            data = read_bytes(uri, self._storage_options)
        except Exception as exc:  # noqa: BLE001 - an unreadable input is rejected with the reason
            yield beam.pvalue.TaggedOutput(REJECTED, unreadable_row(key, uri, exc))
            return
        yield key, uri, data


class InputListing(tuple):
    """The part files (URLs or paths) of a run's input listing, written by ``write_listing``: one
    JSON ``[uri, key]`` per line. ``ReadImages`` reads them inside the pipeline, so the job graph
    carries the part names (one per LISTING_PART_ROWS inputs), never the inputs themselves."""


def write_listing(sources: Sequence[tuple[str, str]], dst: str, storage_options: Mapping[str, Any] | None = None,
                  *, part_rows: int = LISTING_PART_ROWS) -> tuple[InputListing, str]:
    """Write ``sources`` as the input listing of one run under ``dst/_inputs/<run>/``, where every
    worker of the job reads the archive (any fsspec filesystem); returns (the listing, its folder,
    to remove when the run ends). ``_inputs`` starts with ``_``: Parquet tools skip it."""
    fs, root = filesystem_for(str(dst), dict(storage_options or {}) or None)
    folder = f"{root.rstrip('/')}/{LISTING_DIR}/{uuid.uuid4().hex}"
    fs.makedirs(folder, exist_ok=True)
    parts = []
    for n, start in enumerate(range(0, len(sources), part_rows)):
        path = f"{folder}/part-{n:05d}.jsonl"
        text = "".join(json.dumps([uri, key]) + "\n" for uri, key in sources[start:start + part_rows])
        with fs.open(path, "wb") as f:
            f.write(text.encode())
        parts.append(fs.unstrip_protocol(path) if "://" in str(dst) else path)
    return InputListing(parts), folder


def remove_listing(folder: str, dst: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove a run's listing folder (and ``_inputs`` when no other run's listing is left)."""
    fs, _ = filesystem_for(str(dst), dict(storage_options or {}) or None)
    try:
        fs.rm(folder, recursive=True)
        parent = folder.rsplit("/", 1)[0]
        if not fs.ls(parent):
            fs.rm(parent, recursive=True)
    except FileNotFoundError:
        pass


class _ReadListing(beam.DoFn):
    """A part file of an InputListing -> its (uri, key) pairs."""

    def __init__(self, storage_options: Mapping[str, Any] | None) -> None:
        self._storage_options = dict(storage_options or {}) or None

    def process(self, part: str):
        fs, path = filesystem_for(part, self._storage_options)
        with fs.open(path, "rb") as f:
            for line in f:
                if line.strip():
                    uri, key = json.loads(line)
                    yield str(uri), str(key)


class ReadImages(beam.PTransform):
    """Read every file under a source: outputs ``images`` ((key, uri, bytes)) and ``rejected`` rows.

    ``src`` is a folder, a file or an fsspec URL (``s3://bucket/photos``), listed inside the
    pipeline with ``sources.list_sources``; an ``InputListing`` (``write_listing``: the launcher's
    plan in files that the pipeline reads, what ``encode_beam`` uses); or the ``(uri, key)`` pairs
    of a plan (``plan_encode(...).todo``), which then travel in the job graph (small jobs only:
    about 100 bytes each, and Dataflow refuses graphs over 10 MB). ``storage_options`` go to
    fsspec (``{"client_kwargs": {"endpoint_url": ...}}``; S3 endpoints also come from
    ``COLDPRESS_S3_ENDPOINT_URL``/``AWS_ENDPOINT_URL`` on the workers). Files are not filtered by
    type: what is not an image is rejected by the encoder, with the reason.
    """

    def __init__(self, src: str | Sequence[tuple[str, str]], storage_options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if isinstance(src, (str, InputListing)):
            self._src = src
        else:
            self._src = [(str(u), str(k)) for u, k in src]
        self._storage_options = dict(storage_options or {}) or None

    def expand(self, pbegin):
        if isinstance(self._src, str):
            sources = (pbegin
                       | "Name the source" >> beam.Create([self._src])
                       | "List its files" >> beam.ParDo(_ListSources(self._storage_options)))
        elif isinstance(self._src, InputListing):
            sources = (pbegin
                       | "Name the listing's parts" >> beam.Create(list(self._src), reshuffle=False)
                       | "Read the listing" >> beam.ParDo(_ReadListing(self._storage_options)))
        else:
            sources = pbegin | "Take the planned files" >> beam.Create(self._src, reshuffle=False)
        return (sources
                | "Spread the reads over the workers" >> beam.Reshuffle()
                | "Read each file" >> beam.ParDo(_ReadSource(self._storage_options)).with_outputs(REJECTED, main=IMAGES))


# -- encoding --------------------------------------------------------------------------------------
class _Archiver:
    """What CodecModelHandler loads: a codec, applied to whole batches (one call per batch, also
    when it is shared across processes and each call is a round trip)."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def archive_batch(self, batch: list[tuple[str, str, bytes]], bpp: float) -> list[tuple[str, dict[str, Any]]]:
        return [process_input(key, uri, data, self.codec, bpp) for key, uri, data in batch]


class CodecModelHandler(ModelHandler):
    """RunInference's handler for a coldpress codec: (key, uri, bytes) in, ("archived"|"rejected", row) out.

    ``load_model`` builds the codec (``get_codec(codec, **codec_options)``) once per worker process
    (RunInference shares it between the process's threads); with ``large_model`` or
    ``model_copies`` one copy (or N) per machine serves every process, through Beam's
    multi_process_shared. Inputs are batched by ``BatchElements`` up to ``max_batch_size``;
    ``run_inference`` never raises for a bad input (``records.process_input`` rejects it with the reason).
    """

    def __init__(self, codec: str | Codec, bpp: float, *, codec_options: Mapping[str, Any] | None = None,
                 max_batch_size: int = DEFAULT_BATCH_SIZE, large_model: bool = False,
                 model_copies: int | None = None, torch_threads: int | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size, large_model=large_model,
                         model_copies=model_copies)
        self._codec = codec
        self._codec_options = dict(codec_options or {})
        self._bpp = check_bpp(bpp)
        self._torch_threads = torch_threads

    def load_model(self) -> _Archiver:
        if self._torch_threads:  # several worker processes on one machine: share its cores, not oversubscribe them
            import torch

            torch.set_num_threads(self._torch_threads)
        return _Archiver(resolve_codec(self._codec, **self._codec_options))

    def run_inference(self, batch, model, inference_args=None):
        return model.archive_batch([(str(k), str(u), bytes(d)) for k, u, d in batch], self._bpp)

    def get_num_bytes(self, batch) -> int:
        return sum(len(data) for _, _, data in batch)

    def get_metrics_namespace(self) -> str:
        return "coldpress"

    def __repr__(self) -> str:
        name = self._codec.name if isinstance(self._codec, Codec) else self._codec
        return f"CodecModelHandler({name!r}, bpp={self._bpp})"


class _SortByStatus(beam.DoFn):
    def process(self, result: tuple[str, dict[str, Any]]):
        status, row = result
        yield row if status == "archived" else beam.pvalue.TaggedOutput(REJECTED, row)


class EncodeImages(beam.PTransform):
    """Encode (key, uri, bytes) images at ``bpp`` with ``codec``: outputs ``archived`` and ``rejected`` rows.

    Built on RunInference with ``CodecModelHandler`` (see there for batching and model sharing).
    Inputs that cannot be archived (not an image, rate unreachable, failed verify-on-write) leave as
    ``rejected`` rows with the reason. A batch whose inference raises (a GPU out of memory, a lost
    driver: what ``process_input`` does not blame on an input) fails its bundle: the runner retries it
    and then fails the job, so no input is rejected for the environment's fault; a resumed run
    encodes what is missing.
    """

    def __init__(self, codec: str | Codec = DEFAULT_CODEC, bpp: float = 0.05, *,
                 codec_options: Mapping[str, Any] | None = None, max_batch_size: int = DEFAULT_BATCH_SIZE,
                 large_model: bool = False, model_copies: int | None = None, torch_threads: int | None = None,
                 handler: CodecModelHandler | None = None) -> None:
        super().__init__()
        # ``handler``: a ready (e.g. subclassed) CodecModelHandler, used instead of the other arguments.
        self._handler = handler or CodecModelHandler(codec, bpp, codec_options=codec_options,
                                                     max_batch_size=max_batch_size, large_model=large_model,
                                                     model_copies=model_copies, torch_threads=torch_threads)

    def expand(self, images):
        results = images | "Run the codec on batches" >> RunInference(self._handler)
        rows = results | "Sort archived from rejected" >> beam.ParDo(_SortByStatus()).with_outputs(
            REJECTED, main=ARCHIVED)
        return {ARCHIVED: rows[ARCHIVED], REJECTED: rows[REJECTED]}


# -- writing ---------------------------------------------------------------------------------------
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
    """(shard number, rows) -> (shard description, its ids), written with ``archive.write_shard``."""

    def __init__(self, dst: str, storage_options: Mapping[str, Any] | None, first_index: int) -> None:
        self._dst, self._storage_options, self._first = dst, dict(storage_options or {}) or None, first_index

    def setup(self) -> None:
        self._fs, _ = filesystem_for(self._dst, self._storage_options)

    def process(self, shard: tuple[int, Iterable[Mapping[str, Any]]]):
        number, rows = shard
        rows = list(rows)
        # overwrite: a retried bundle rewrites the same rows under the same name
        info = write_shard(self._dst, self._first + number, rows, overwrite=True, filesystem=self._fs)
        yield info, sorted(row["id"] for row in rows)


class _FinishArchive(beam.DoFn):
    """Once every shard is written: the rejected table (merged with earlier runs') and the manifest."""

    def __init__(self, dst: str, storage_options: Mapping[str, Any] | None, manifest_extra: Mapping[str, Any],
                 launched: float | None) -> None:
        self._dst, self._storage_options = dst, dict(storage_options or {}) or None
        self._extra, self._launched = dict(manifest_extra), launched

    def process(self, shards: list[tuple[dict[str, Any], list[str]]], rejected: list[dict[str, Any]]):
        fs, _ = filesystem_for(self._dst, self._storage_options)
        writer = ArchiveWriter(self._dst, filesystem=fs)
        for info, ids in sorted(shards, key=lambda s: s[0]["name"]):
            writer.adopt_shard(info, ids)
        for row in sorted(rejected, key=lambda r: r["id"]):
            writer.add_rejected(row)
        extra = dict(self._extra)
        if self._launched is not None:
            extra["started_at"] = _dt.datetime.fromtimestamp(self._launched, _dt.timezone.utc).isoformat()
            extra["elapsed_s"] = round(time.time() - self._launched, 3)
        yield writer.close(extra)


class WriteArchive(beam.PTransform):
    """Write ``{"archived": rows, "rejected": rows}`` as the archive ``dst``; outputs its manifest.

    Archived rows are cut into shards of consecutive ids (as ArchiveWriter cuts them: same shard
    boundaries as the local engine for the same rows), grouped, and each shard is written by one
    worker with ``archive.write_shard``, under indexes after the shards already in ``dst``. Then one
    worker writes the rejected table (merged with earlier runs') and the manifest through
    ArchiveWriter. ``manifest_extra`` are the engine's manifest keys (``plan.run_manifest``).
    """

    def __init__(self, dst: str, storage_options: Mapping[str, Any] | None = None, *,
                 rows_per_shard: int = DEFAULT_ROWS_PER_SHARD, bytes_per_shard: int = DEFAULT_BYTES_PER_SHARD,
                 manifest_extra: Mapping[str, Any] | None = None, launched: float | None = None) -> None:
        super().__init__()
        if rows_per_shard < 1 or bytes_per_shard < 1:
            raise ValueError("rows_per_shard and bytes_per_shard must be positive")
        self._dst, self._storage_options = str(dst), dict(storage_options or {}) or None
        self._rows, self._bytes = rows_per_shard, bytes_per_shard
        self._extra = dict(manifest_extra or {"engine": ENGINE})
        self._launched = launched

    def expand(self, rows):
        archived, rejected = rows[ARCHIVED], rows[REJECTED]
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
                    beam.pvalue.AsList(rejected)))


# -- restoring -------------------------------------------------------------------------------------
class _PlanRestore(beam.DoFn):
    """archive -> batches of wanted ids (about one row group each) with their file names."""

    def __init__(self, ids: list[str] | None, fmt: str, storage_options: Mapping[str, Any] | None) -> None:
        self._ids, self._fmt, self._storage_options = ids, fmt, dict(storage_options or {}) or None

    def process(self, archive: str):
        fs, _ = filesystem_for(archive, self._storage_options)
        if self._ids is None:
            wanted = sorted(set(open_archive(archive, filesystem=fs).read(columns=["id"]).column("id").to_pylist()))
        else:
            wanted = sorted(set(self._ids))
        names = restored_names(wanted, self._fmt)
        for start in range(0, len(wanted), ROW_GROUP_ROWS):
            chunk = wanted[start:start + ROW_GROUP_ROWS]
            yield {rid: names[rid] for rid in chunk}


class _ReadRows(beam.DoFn):
    """{id: file name} -> (archive row, file name) for each id; reads only the row groups holding them."""

    def __init__(self, archive: str, storage_options: Mapping[str, Any] | None) -> None:
        self._archive, self._storage_options = archive, dict(storage_options or {}) or None
        self._opened = None

    def process(self, names: dict[str, str]):
        if self._opened is None:
            fs, _ = filesystem_for(self._archive, self._storage_options)
            self._opened = open_archive(self._archive, filesystem=fs)
        for row in self._opened.read(ids=sorted(names)).to_pylist():
            yield row, names[row["id"]]


class _DecodeAndWrite(beam.DoFn):
    """(row, name) -> (id, path written); a row that does not decode leaves as (id, reason) on ``failed``."""

    def __init__(self, dst: str, fmt: str, storage_options: Mapping[str, Any] | None) -> None:
        self._dst, self._fmt, self._storage_options = dst, fmt, dict(storage_options or {}) or None

    def process(self, item: tuple[Mapping[str, Any], str]):
        row, name = item
        rid = row["id"]
        try:
            target = restore_record(row, join_destination(self._dst, name), self._fmt, self._storage_options)
        except Exception as exc:  # noqa: BLE001 - sorted below: a bad row is reported, a bad destination stops
            reason = restore_failure(exc)
            if reason is None:  # the destination or the environment, not the row: fail the job
                raise_if_environmental(exc, f"restoring {rid!r} into {self._dst}")
                raise
            yield beam.pvalue.TaggedOutput(FAILED, (rid, reason))
            return
        yield rid, target


class RestoreImages(beam.PTransform):
    """Decode images of ``archive`` into files under ``dst``: outputs ``restored`` (id, path) and
    ``failed`` (id, reason).

    ``ids`` None restores every row. Files are named as by the local engine
    (``records.restored_names``). The ids are split into batches of about one row group; each batch
    is read by one worker (only the row groups holding its ids), and its rows are redistributed so
    that decoding runs on every worker.
    """

    def __init__(self, archive: str, ids: Iterable[str] | None, dst: str, *, fmt: str = DEFAULT_RESTORE_FORMAT,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if isinstance(ids, str):
            raise TypeError("ids must be a list of ids, not a single string")
        self._archive, self._dst, self._fmt = str(archive), str(dst), fmt
        self._ids = None if ids is None else sorted(set(ids))
        self._storage_options = dict(storage_options or {}) or None

    def expand(self, pbegin):
        return (pbegin
                | "Name the archive" >> beam.Create([self._archive])
                | "Batch the wanted ids by row group" >> beam.ParDo(_PlanRestore(self._ids, self._fmt, self._storage_options))
                | "Spread the batches" >> beam.Reshuffle()
                | "Read their rows" >> beam.ParDo(_ReadRows(self._archive, self._storage_options))
                | "Spread the rows" >> beam.Reshuffle()
                | "Decode and write each image" >> beam.ParDo(
                    _DecodeAndWrite(self._dst, self._fmt, self._storage_options)).with_outputs(FAILED, main=RESTORED))


# -- jobs ------------------------------------------------------------------------------------------
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
    launched = time.time()
    started = time.monotonic()
    options = pipeline_options(pipeline_args)
    codec_options = dict(codec_options or {})
    the_codec = resolve_codec(codec, **codec_options)  # a bad name or missing model fails here, not in a worker
    large_model, copies = _sharing(options, the_codec, codec_options)
    plan = plan_encode(str(src), str(dst), storage_options, resume=resume)
    runner = options.view_as(StandardOptions).runner
    extra = run_manifest(ENGINE, plan, the_codec, bpp, resume=resume, strict=strict, elapsed_s=0.0,
                         runner=runner if isinstance(runner, str) else type(runner).__name__, large_model=large_model)
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
    listing, listing_folder = write_listing(plan.todo, str(dst), storage_options)
    try:
        _run_encode(options, listing, storage_options, the_codec, codec_spec, codec_options, bpp, max_batch_size,
                    large_model, copies, threads, str(dst), rows_per_shard, extra, launched)
    finally:
        remove_listing(listing_folder, str(dst), storage_options)
    manifest = read_manifest(str(dst), filesystem=plan.dst_fs)
    if manifest is None:  # pragma: no cover - the pipeline succeeded, so its last step wrote it
        raise ArchiveError(f"the Beam job finished but {dst} has no manifest; run the job again (it resumes)")
    manifest.setdefault("launcher_elapsed_s", round(time.monotonic() - started, 3))
    check_strict(manifest, plan, strict)
    return manifest


def _run_encode(options: PipelineOptions, listing: InputListing, storage_options: Mapping[str, Any] | None,
                the_codec: Codec, codec_spec: str | Codec, codec_options: dict[str, Any], bpp: float,
                max_batch_size: int, large_model: bool, copies: int | None, threads: int | None, dst: str,
                rows_per_shard: int, extra: dict[str, Any], launched: float) -> None:
    with make_pipeline(options) as p:
        read = p | "Read the planned sources" >> ReadImages(listing, storage_options)
        encoded = read[IMAGES] | f"Encode at {bpp:g} bpp with {the_codec.name}" >> EncodeImages(
            codec_spec, bpp, codec_options=codec_options, max_batch_size=max_batch_size,
            large_model=large_model, model_copies=copies, torch_threads=threads)
        rejected = (read[REJECTED], encoded[REJECTED]) | "Gather every rejection" >> beam.Flatten()
        _ = ({ARCHIVED: encoded[ARCHIVED], REJECTED: rejected}
             | "Write the archive" >> WriteArchive(dst, storage_options, rows_per_shard=rows_per_shard,
                                                   manifest_extra=extra, launched=launched))


def restore_beam(
    archive: str,
    dst: str,
    *,
    ids: Iterable[str] | None = None,
    fmt: str = DEFAULT_RESTORE_FORMAT,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    pipeline_args: Sequence[str] | PipelineOptions | None = None,
) -> list[str]:
    """``restore_local`` as a Beam pipeline: same arguments and files; returns the paths written, sorted by id.

    Absent ids raise ArchiveError before the pipeline starts. Rows that do not decode are skipped,
    the others written, then ArchiveError lists the failures; to bring them back to the launcher on
    any runner, the pipeline writes them to a hidden report file in ``dst``
    (``.coldpress-restore-<id>.json``), which is read and deleted.
    """
    archive, dst = str(archive), str(dst)
    if isinstance(ids, str):
        raise TypeError("ids must be a list of ids, not a single string")
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
        restored = p | "Restore the images" >> RestoreImages(archive, ids, dst, fmt=fmt, storage_options=storage_options)
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
