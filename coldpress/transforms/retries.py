"""What object storage made coldpress retry, counted per process from botocore's own events.

``watch(fs)`` (called by ``sources.filesystem_for`` for every S3 filesystem) gives the filesystem an
aiobotocore session of its own whose clients report to this module: ``needs-retry`` (every attempt,
with its outcome: a failed one is an error status, 5xx/429/throttling, or a connection error, a
timeout or a truncated read) and ``after-call`` (a call that succeeded, with the ``RetryAttempts`` it
took). ``snapshot()`` returns the counts so far:

- ``requests``: calls that succeeded, ``retried``: retries those calls needed (botocore's count),
- ``failed_attempts``: attempts that failed, whether retried or not (the faults seen),
- ``by_error``: failed attempts by error code or exception class.

``since(before)`` is what happened after an earlier snapshot, ``add`` sums two of them:
``ArchiveWriter`` puts into the manifest, as ``storage_retries``, the counts of the process that
writes the archive plus the ``worker_storage_retries`` an engine gathered from its workers (the local
engine's worker processes report theirs with each chunk, Ray's encode actors with the first row of
each batch and its write tasks with their results; Beam's workers with ``take``, below).

``take()`` is what this process counted since the last ``take`` (or since it started), each count
taken once whatever the threads: Beam's workers run several bundles at once in one process, and the
storage calls of all of them run in fsspec's one event loop thread, so no count can be told apart by
element or thread. A step of each Beam stage that makes storage calls takes them when its bundle
ends and sends them on as elements (``pipelines.beam.write``), which reach the step writing the
manifest; the counts of a bundle that failed are lost with its outputs (Beam retries it).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

_lock = threading.Lock()
_counts: Counter[str] = Counter()
_errors: Counter[str] = Counter()


def _failure(response: Any, caught_exception: Any) -> str | None:
    """The error of one attempt (None when it succeeded)."""
    if caught_exception is not None:
        return type(caught_exception).__name__
    if not response:
        return None
    http, parsed = response[0], response[1] if len(response) > 1 else {}
    status = getattr(http, "status_code", None)
    code = (parsed or {}).get("Error", {}).get("Code") if isinstance(parsed, dict) else None
    if status is not None and (status >= 500 or status == 429):
        return str(code or status)
    if code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed"):
        return str(code)
    return None


def _on_attempt(response: Any = None, caught_exception: Any = None, **_: Any) -> None:
    error = _failure(response, caught_exception)
    if error is not None:
        with _lock:
            _counts["failed_attempts"] += 1
            _errors[error] += 1
    return None  # never decides anything: botocore's own retry handler does


def _on_call(parsed: Any = None, **_: Any) -> None:
    retried = 0
    if isinstance(parsed, dict):
        retried = int((parsed.get("ResponseMetadata") or {}).get("RetryAttempts") or 0)
    with _lock:
        _counts["requests"] += 1
        _counts["retried"] += retried


def watch(fs: Any) -> Any:
    """Count the retries of S3 filesystem ``fs`` (any other filesystem is returned as it is)."""
    protocol = getattr(fs, "protocol", None)
    protocols = protocol if isinstance(protocol, tuple) else (protocol,)
    if not any(p in ("s3", "s3a") for p in protocols) or getattr(fs, "_coldpress_watched", False):
        return fs
    try:
        if fs.session is None:  # a session of our own: s3fs keeps an injected one across refreshes
            import aiobotocore.session

            fs.session = aiobotocore.session.AioSession(**fs.kwargs)
            fs._session_is_owned = False
        emitters = [fs.session]
        if getattr(fs, "_s3", None) is not None:  # a client made before: it copied the session's handlers
            emitters.append(fs._s3.meta.events)
        for emitter in emitters:
            emitter.register("needs-retry.s3", _on_attempt, unique_id="coldpress-retries-attempt")
            emitter.register("after-call.s3", _on_call, unique_id="coldpress-retries-call")
        fs._coldpress_watched = True
    except Exception:  # noqa: BLE001 - counting is a report, never a reason to fail
        pass
    return fs


def _now() -> dict[str, Any]:
    return {"requests": _counts["requests"], "retried": _counts["retried"],
            "failed_attempts": _counts["failed_attempts"], "by_error": dict(_errors)}


def snapshot() -> dict[str, Any]:
    with _lock:
        return _now()


_taken = _now()


def take() -> dict[str, Any]:
    """What this process counted since the last ``take``, as ``since`` gives it; it is not taken again."""
    global _taken
    with _lock:
        now, before, _taken = _now(), _taken, _now()
    return _diff(now, before)


def since(before: dict[str, Any]) -> dict[str, Any]:
    return _diff(snapshot(), before)


def _diff(now: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    by_error = {k: v - before["by_error"].get(k, 0) for k, v in now["by_error"].items()}
    return {"requests": now["requests"] - before["requests"], "retried": now["retried"] - before["retried"],
            "failed_attempts": now["failed_attempts"] - before["failed_attempts"],
            "by_error": {k: v for k, v in sorted(by_error.items()) if v}}


def zero() -> dict[str, Any]:
    return {"requests": 0, "retried": 0, "failed_attempts": 0, "by_error": {}}


def add(a: dict[str, Any], b: dict[str, Any] | None) -> dict[str, Any]:
    """The sum of two ``since`` results."""
    if not b:
        return a
    errors = dict(a.get("by_error", {}))
    for k, v in (b.get("by_error") or {}).items():
        errors[k] = errors.get(k, 0) + v
    return {"requests": a.get("requests", 0) + b.get("requests", 0), "retried": a.get("retried", 0) + b.get("retried", 0),
            "failed_attempts": a.get("failed_attempts", 0) + b.get("failed_attempts", 0),
            "by_error": dict(sorted(errors.items()))}
