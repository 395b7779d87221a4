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
  read in parallel) with ``sources.list_sources`` and ``sources.read_source``: the same listing,
  ids and URIs as the other engines, and every filesystem fsspec reaches (s3, gs, az, ...). A
  raster file of ``sources.LARGE_SOURCE_BYTES`` (64 MB) or more travels as a ``SourceFile`` (URI,
  size, sha256), not its bytes, and the encode step reads it with GDAL window by window.
- **Shards through write_shard, not WriteToParquet.** ``WriteToParquet`` has one compression codec
  for every column (the archive uses zstd-15 and zstd-1 for the bitstream), no dictionary,
  statistics or page-checksum settings per column, no row groups bounded by bitstream bytes, no
  sorting of rows by id nor per-file ``coldpress.bitstream_bytes`` metadata, and names its files
  ``prefix-SSSSS-of-NNNNN``. So ``WriteArchive`` groups rows into deterministic shards and writes
  each with the foundation's ``archive.write_shard`` (same writer options, sorted ids, atomic
  write-then-rename); a retried bundle rewrites the same shard under the same name.
- **Rows staged in storage, not shuffled through the runner.** The deterministic cut needs every
  row's id and size before any shard is written; a runner holds what waits for it, and FnApiRunner
  holds it in the launching process (2.1 GB at 100,000 small inputs, against 0.8 GB without). So
  the workers write the rows where they were encoded (``archive/staging.py``, ``_staging/``) and
  only ids and sizes travel; the listing sends consecutive inputs to a worker in chunks
  (``InputListing.chunk``), so each shard's writer reads its rows from few row groups.
- **Encoding through RunInference** with ``CodecModelHandler``: the codec is loaded once per worker
  process and shared by its threads, inputs are batched (``max_batch_size``), and with
  ``large_model`` (the default when the launcher sees a GPU; ``--large_model``/``--model_copies N``
  otherwise) one copy per machine serves every process, instead of one per process.

Modules: ``options`` (pipeline options, runner, codec sharing, output tags), ``read``
(``ReadImages``, input listings), ``encode`` (``EncodeImages``, ``CodecModelHandler``), ``write``
(``WriteArchive``; ``TakeRetries``: the workers' storage retries, for its manifest), ``restore``
(``RestoreImages``; ``_DecodeAndWrite`` is the one place a worker decodes a row) and ``jobs``
(``encode_beam``, ``restore_beam``).
"""

from coldpress.pipelines.beam.encode import CodecModelHandler, EncodeImages
from coldpress.pipelines.beam.jobs import encode_beam, restore_beam, restore_outcome
from coldpress.pipelines.beam.options import (
    ARCHIVED,
    DEFAULT_BATCH_SIZE,
    DEFAULT_RUNNER,
    ENGINE,
    FAILED,
    IMAGES,
    REJECTED,
    RESTORED,
    RETRIES,
    CodecSharingOptions,
    make_pipeline,
    pipeline_options,
)
from coldpress.pipelines.beam.read import (
    LISTING_DIR,
    LISTING_PART_ROWS,
    InputListing,
    ReadImages,
    _ReadListing,
    remove_listing,
    write_listing,
)
from coldpress.pipelines.beam.restore import RestoreImages
from coldpress.pipelines.beam.write import TakeRetries, WriteArchive

__all__ = [
    "ARCHIVED", "DEFAULT_BATCH_SIZE", "DEFAULT_RUNNER", "ENGINE", "FAILED", "IMAGES", "LISTING_DIR", "LISTING_PART_ROWS",
    "REJECTED", "RESTORED", "RETRIES", "CodecModelHandler", "CodecSharingOptions", "EncodeImages", "InputListing",
    "ReadImages", "RestoreImages", "TakeRetries", "WriteArchive", "encode_beam", "make_pipeline", "pipeline_options",
    "remove_listing",
    "restore_beam", "restore_outcome", "write_listing", "_ReadListing",
]
