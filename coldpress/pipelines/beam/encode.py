"""EncodeImages: RunInference with a coldpress codec (CodecModelHandler)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference

from coldpress.codec.base import Codec, check_bpp
from coldpress.defaults import DEFAULT_CODEC
from coldpress.transforms.plan import resolve_codec
from coldpress.transforms.records import process_input
from coldpress.transforms.sources import SourceFile
from coldpress.pipelines.beam.options import DEFAULT_BATCH_SIZE, ARCHIVED, REJECTED


class _Archiver:
    """What CodecModelHandler loads: a codec, applied to whole batches (one call per batch, also
    when it is shared across processes and each call is a round trip)."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def archive_batch(self, batch: list[tuple[str, str, bytes | SourceFile]],
                      bpp: float) -> list[tuple[str, dict[str, Any]]]:
        return [process_input(key, uri, data, self.codec, bpp) for key, uri, data in batch]


class CodecModelHandler(ModelHandler):
    """RunInference's handler for a coldpress codec: (key, uri, bytes) in, ("archived"|"rejected", row) out.

    A large raster comes as (key, uri, ``sources.SourceFile``) (``ReadImages``): GDAL opens it where
    it is (a local path, or an fsspec file such as s3://) and the encoder reads it window by window,
    as in the local engine, so neither the element nor the worker holds the whole file.

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
        return model.archive_batch([(str(k), str(u), d if isinstance(d, (bytes, SourceFile)) else bytes(d))
                                    for k, u, d in batch],
                                   self._bpp)  # bytes subclasses (datasets.DatasetBytes) keep their columns

    def get_num_bytes(self, batch) -> int:
        return sum(len(data) for _, _, data in batch)  # a SourceFile counts its file's size: the bytes encoded

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
    """Encode (key, uri, bytes | SourceFile) images at ``bpp`` with ``codec``: outputs ``archived`` and
    ``rejected`` rows.

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
