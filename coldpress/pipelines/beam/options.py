"""The Beam engine's pipeline options (runner, codec sharing) and the names its transforms share."""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from coldpress.codec.base import Codec
from coldpress.errors import ColdpressError

ENGINE = "beam"

#: The runner used when the pipeline options name none: in-process, nothing downloaded.
DEFAULT_RUNNER = "FnApiRunner"
#: Inputs per RunInference batch (a batch is one call of the model, or one round trip to a shared one).
DEFAULT_BATCH_SIZE = 4
#: Tags of the outputs of ReadImages, EncodeImages and RestoreImages.
IMAGES, ARCHIVED, REJECTED, RESTORED, FAILED = "images", "archived", "rejected", "restored", "failed"
#: Optional input of WriteArchive: the workers' storage retries (``write.TakeRetries``).
RETRIES = "storage_retries"


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
        secret = [a.split("=", 1)[0] for a in flags if _is_secret_name(a.split("=", 1)[0].lstrip("-"))]
        if secret:
            raise ColdpressError(
                f"the Beam option {secret[0]} would store a credential in the job's pipeline options, which "
                "runners keep in the job's metadata (Dataflow shows them in its console); coldpress reads "
                "storage through fsspec, not Beam's own S3 options: give credentials through the workers' "
                "environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, an instance role or service "
                "account) and leave the option out"
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


#: Names (of storage options or pipeline flags) that hold credentials, in part or whole.
_SECRET_PARTS = ("secret", "password", "passwd", "token", "access_key", "account_key", "credential",
                 "connection_string")
#: Values of such names that are modes, not credentials (gcsfs ``token="google_default"``, ...).
_MODES = {"anon", "google_default", "cloud", "browser", "cache"}
_SECRET_NAMES = {"key", "aws_access_key_id"}


def _is_secret_name(name: str) -> bool:
    name = name.lower().replace("-", "_")
    return name in _SECRET_NAMES or any(part in name for part in _SECRET_PARTS)


def graph_storage_options(storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``storage_options`` as they may travel inside a Beam job graph (pickled into its transforms,
    which a runner stores and may display): refused with a clear error when they hold a credential
    (``key``/``secret``/``token`` of s3fs, ``aws_secret_access_key`` in ``client_kwargs``, an account
    key, a password, ...). Workers take credentials from their own environment instead."""
    options = dict(storage_options or {}) or None
    stack = [("", options or {})]
    while stack:
        prefix, mapping = stack.pop()
        for name, value in mapping.items():
            if isinstance(value, Mapping):
                stack.append((f"{prefix}{name}.", value))
            elif value not in (None, "", False) and value not in _MODES and _is_secret_name(str(name)):
                raise ColdpressError(
                    f"storage option {prefix}{name} holds a credential, which would travel inside the Beam job "
                    "graph (runners store it, and may display it); give credentials to the workers through their "
                    "environment instead (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, a profile, "
                    "an instance role or service account) and leave it out of the storage options"
                )
    return options


def make_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A pipeline on the runner of ``options``. FnApiRunner is built as DirectRunner builds it, with
    the options in its provision info, so that its worker processes see them (log level, ...)."""
    if _runner_name(options) != DEFAULT_RUNNER.lower():
        return beam.Pipeline(options=options)
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner, worker_handlers

    # Size-based flushing only on the runner's data streams. With a time limit, a timer thread flushes
    # them every second while another thread writes a stage's input, and the bytes written between its
    # get() and _clear() are discarded (apache_beam/runners/worker/data_plane.py,
    # TimeBasedBufferingClosableOutputStream, 2.77.0): the likely cause of inputs dropped without an
    # error in multi_processing mode (results/scale/README.md). A batch job loses nothing by it: every
    # stream is flushed when it closes. encode_beam still checks that nothing was dropped.
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
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
