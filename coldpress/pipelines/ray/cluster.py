"""The Ray engine's cluster side: connecting, sizing the actor pools, job errors, shared settings."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import ray
from ray.data import DataContext

from coldpress.codec.base import Codec
from coldpress.errors import ColdpressError, EnvironmentFault
from coldpress.transforms.faults import environment_cause

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
            # "local": a new instance even where a `ray start` (or a test cluster) left its address
            # in /tmp/ray/ray_current_cluster, which ray.init() would otherwise join.
            ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_memory, **kwargs)
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
    """Use as many torch threads as CPUs this actor holds (Ray sets OMP_NUM_THREADS, torch may not
    follow). Only where a codec already imported torch: a jpeg or avif actor never loads it."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        torch.set_num_threads(max(1, int(cpus)))
    except Exception:  # noqa: BLE001 - best effort
        pass


def _codec_spec(codec: str | Codec, codec_options: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(name, options) that rebuild ``codec`` in an actor: a model file, tile or scale-search setting
    of the launcher's codec reaches every actor (``Codec.options``)."""
    if isinstance(codec, Codec):
        return codec.name, {**codec.options(), **dict(codec_options or {})}
    return str(codec), dict(codec_options or {})
