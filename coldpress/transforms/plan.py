"""What a job does, decided before any input is touched; shared by every engine (local, Ray, Beam).

Encode: resolve the codec, check the rate, list the inputs (minus the archive itself and, on a
resumed run, the ids already archived), describe the run in the manifest, and raise the strict-mode
error. Restore: where a restored file goes, which errors are a bad row rather than a bad
destination, and the error that lists the rows that failed. Engines differ only in how they run
the per-input transforms (``coldpress.transforms.records``) over this plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from coldpress.codec import get_codec
from coldpress.codec.base import Codec
from coldpress.errors import ArchiveError, ColdpressError, InputRejected, RejectedInputs
from coldpress.transforms import retries
from coldpress.transforms.archive import existing_ids
from coldpress.transforms.faults import environment_cause
from coldpress.transforms.sources import COLLISION_MARK, filesystem_for, list_sources, record_id, redact_url


def resolve_codec(codec: str | Codec, **options: Any) -> Codec:
    """The codec instance for a name (or the instance itself); an unknown name is a ColdpressError."""
    if isinstance(codec, Codec):
        return codec
    try:
        return get_codec(codec, **options)
    except ValueError as exc:  # unknown name: the registry's message lists the known ones
        raise ColdpressError(f"{exc} (pass it as --codec NAME)") from None


def _url(fs: Any, path: str, original: str) -> str:
    """``path`` on ``fs`` in the form list_sources records URIs: absolute local path, or full URL."""
    if "://" not in str(original) and "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return os.path.normpath(os.path.abspath(path))
    return fs.unstrip_protocol(path)


@dataclass
class EncodePlan:
    """The inputs of an encode run: ``todo`` are ``(uri, key)`` pairs to encode, sorted by key;
    ``storage_retries``: what object storage made the planning retry (``transforms.retries``), which
    ``run_manifest`` passes on to the manifest's ``storage_retries``."""

    src: str
    dst: str
    dst_fs: Any
    sources: list[tuple[str, str]]
    todo: list[tuple[str, str]]
    skipped: int
    storage_retries: dict[str, Any] = field(default_factory=retries.zero)


def plan_encode(src: str, dst: str, storage_options: Mapping[str, Any] | None = None, *,
                resume: bool = True) -> EncodePlan:
    """List the inputs under ``src`` and decide which of them this run encodes into ``dst``.

    Files inside ``dst`` (an archive inside the tree it archives) are left out. Inputs whose id is
    already archived in ``dst`` are skipped; with ``resume=False`` an existing archive is an
    ArchiveError. Inputs whose key gives no valid id stay in ``todo``: process_input rejects them
    with the reason.
    """
    src, dst = str(src), str(dst)
    before = retries.snapshot()
    dst_fs, dst_path = filesystem_for(dst, storage_options)
    dst_root = dst_path.rstrip("/") or dst_path
    sources = list_sources(src, storage_options)
    dst_url = _url(dst_fs, dst_root, dst)
    sources = [(uri, key) for uri, key in sources if not (uri == dst_url or uri.startswith(dst_url.rstrip("/") + "/"))]
    done = existing_ids(dst, filesystem=dst_fs)
    if done and not resume:
        raise ArchiveError(
            f"{dst} already holds an archive of {len(done)} image(s) and resume is off; write to a new "
            "destination, delete this one first, or turn resume on to add only the missing inputs"
        )
    todo, skipped, ids = [], 0, set()
    for uri, key in sources:
        try:
            rid = record_id(key)
        except InputRejected:
            todo.append((uri, key))  # process_input rejects it with the reason
            continue
        if rid in ids:  # "a//b.png" after "a/b.png" (object stores keep both): rejected, never archived twice
            todo.append((uri, key + COLLISION_MARK))
            continue
        ids.add(rid)
        if rid in done:
            skipped += 1
            continue
        todo.append((uri, key))
    return EncodePlan(src=src, dst=dst, dst_fs=dst_fs, sources=sources, todo=todo, skipped=skipped,
                      storage_retries=retries.since(before))


def run_manifest(engine: str, plan: EncodePlan, codec: Codec, bpp: float, *, resume: bool, strict: bool,
                 elapsed_s: float, **extra: Any) -> dict[str, Any]:
    """The engine's keys of the run manifest (``ArchiveWriter.close(manifest_extra)``)."""
    described = codec.describe()
    manifest = {
        "engine": engine,
        "src": redact_url(plan.src),  # never a user:password given in the URL
        "codec": codec.name,
        "model_id": described.get("model_id", ""),
        "weights_hash": described.get("weights_hash", ""),
        "target_bpp": float(bpp),
        "device_class": codec.device_class,
        "inputs_seen": len(plan.sources),
        "skipped": plan.skipped,
        "resume": resume,
        "strict": strict,
        "elapsed_s": round(elapsed_s, 3),
    }
    if plan.storage_retries.get("requests") or plan.storage_retries.get("failed_attempts"):
        manifest["planning_storage_retries"] = plan.storage_retries  # ArchiveWriter adds it to storage_retries
    manifest.update(extra)
    return manifest


def check_strict(manifest: dict[str, Any], plan: EncodePlan, strict: bool) -> None:
    """Raise RejectedInputs (carrying the manifest) when ``strict`` and this run rejected inputs."""
    if strict and manifest.get("rejected"):
        raise RejectedInputs(
            f"{manifest['rejected']} of {len(plan.todo)} input(s) were rejected (strict mode); the others are "
            f"archived in {plan.dst}. See the reasons with `coldpress inspect {plan.dst}` and fix or remove those inputs",
            manifest,
        )


# -- restore ----------------------------------------------------------------------------------------
def join_destination(dst: str, name: str) -> str:
    """Where the restored file ``name`` (a ``restored_names`` value, '/'-separated) goes under ``dst``."""
    if "://" in dst:
        return dst.rstrip("/") + "/" + name
    return os.path.join(dst, *name.split("/"))


def restore_failure(exc: BaseException) -> str | None:
    """Why one row could not be restored, or None when ``exc`` is about the destination or the
    environment (re-raise it: a full disk or a lost connection is not a damaged row)."""
    if environment_cause(exc) is not None:
        return None
    if isinstance(exc, ColdpressError):
        return str(exc)
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return None  # the destination, not the row: stop
    if isinstance(exc, (ValueError, OSError, SyntaxError)):  # a decoder choking on a damaged payload
        return (f"the bitstream does not decode ({type(exc).__name__}: {exc}); "
                "restore the archive from a replica or re-encode the source")
    return None


def restore_failures_error(failures: list[tuple[str, str]], total: int, written: int, archive: str,
                           dst: str) -> ArchiveError:
    """The ArchiveError listing the rows that could not be restored (the others were written)."""
    shown = "; ".join(f"{rid}: {msg}" for rid, msg in failures[:5])
    more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
    return ArchiveError(
        f"{len(failures)} of {total} image(s) could not be restored from {archive} "
        f"({written} written to {dst}): {shown}{more}"
    )
