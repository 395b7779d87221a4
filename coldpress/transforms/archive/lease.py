"""The write lease of an archive: one encode at a time writes into it.

An encode takes the lease before it reads which ids are archived and keeps it until its manifest is
written: ``DST/_lease.json`` (a side file: Parquet tools skip it), created with an exclusive create
(``O_CREAT | O_EXCL`` on a local disk; on S3 a conditional put, ``If-None-Match: *``, which only one
writer wins). The holder renews it every ``ttl / 3`` seconds (on S3 with ``If-Match`` its own ETag,
so a writer that lost it notices) and removes it at the end. A second encode finds it held and stops
with ArchiveError naming the holder and when the lease expires; a lease whose holder died expires
after ``ttl`` seconds (default LEASE_TTL_S; at once when it ran on the same host, boot and process-id
namespace and its process is gone) and the next encode takes it over: it removes the expired lease and
creates its own with the same exclusive create, so of two writers taking it over at once only one
wins. A run that finds its lease taken over, or expired without renewal, ends with ArchiveError
(``leased``) once its encode returns.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from coldpress.errors import ArchiveError
from coldpress.transforms.archive.cleanup import clean_interrupted_writes
from coldpress.transforms.archive.layout import _display, _is_local, _makedirs

LEASE_NAME = "_lease.json"
#: Seconds a lease lives without renewal (``COLDPRESS_LEASE_TTL_S`` overrides it).
LEASE_TTL_S = 120.0


def _s3_parts(fs: Any, path: str) -> tuple[str, str] | None:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "s3" not in protocol and "s3a" not in protocol:
        return None
    bucket, _, key = fs._strip_protocol(path).partition("/")
    return bucket, key


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _dead_here(holder: dict[str, Any]) -> bool:
    """Whether the lease's holder ran on this host, in this boot and this process-id namespace, and its
    process is gone (killed): its lease is taken over at once instead of after ``ttl``. A holder in
    another container that shares the host name (host networking) has pids this one cannot see: it
    is never taken for dead here, it waits for its lease to expire."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    for key, here in (("boot_id", _boot_id()), ("pid_ns", _pid_namespace())):
        if key in holder and holder[key] != here:  # leases written before these keys: the host decides
            return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class ArchiveLease:
    """The lease of the archive at ``root`` on ``fs``; use as a context manager around a run."""

    def __init__(self, fs: Any, root: str, *, ttl: float | None = None) -> None:
        self.fs, self.root = fs, root.rstrip("/")
        self.path = f"{self.root}/{LEASE_NAME}"
        self.ttl = float(ttl if ttl is not None else os.environ.get("COLDPRESS_LEASE_TTL_S", LEASE_TTL_S))
        self.owner = uuid.uuid4().hex
        #: What the interrupted runs before this one left and acquire() removed (cleanup.py).
        self.cleaned: dict[str, int] = {}
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Why this run no longer holds the lease (taken over, or expired unrenewed), else None.
        self.lost: str | None = None
        self._expires_at = 0.0

    def _body(self) -> bytes:
        now = time.time()
        self._expires_at = now + self.ttl
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "boot_id": _boot_id(), "pid_ns": _pid_namespace(),
                           "renewed_at": now, "expires_at": self._expires_at}).encode()

    def _create(self) -> bool:
        """Create the lease file if there is none; False when one exists."""
        s3 = _s3_parts(self.fs, self.path)
        if s3 is not None:
            try:
                out = self.fs.call_s3("put_object", Bucket=s3[0], Key=s3[1], Body=self._body(), IfNoneMatch="*")
            except FileExistsError:
                return False
            self._etag = out.get("ETag")
            return True
        if _is_local(self.fs):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._body())
            return True
        if self.fs.exists(self.path):  # other filesystems: best effort (no atomic create)
            return False
        self.fs.pipe_file(self.path, self._body())
        return True

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except ValueError:
            return {"expires_at": 0}  # unreadable: treat as expired

    def acquire(self) -> ArchiveLease:
        self._made_root = _is_local(self.fs) and not os.path.exists(self.root)
        _makedirs(self.fs, self.root)
        for _ in range(5):
            if self._create():
                # No other writer runs now: what interrupted ones left (temporary files, incomplete
                # multipart uploads, input listings) is stale.
                self.cleaned = clean_interrupted_writes(self.fs, self.root)
                self._thread = threading.Thread(target=self._renew, name="coldpress-lease", daemon=True)
                self._thread.start()
                return self
            holder = self._holder()
            if holder is None:
                continue  # released in between: try again
            if float(holder.get("expires_at", 0)) > time.time() and not _dead_here(holder):
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder["expires_at"])))
                raise ArchiveError(
                    f"another encode is writing into {_display(self.fs, self.root)} (host {holder.get('host', '?')}, "
                    f"pid {holder.get('pid', '?')}); two writers would corrupt it, so this one stops. Run it again "
                    f"when that one has finished (it then adds only the rest); if that one died, its lease "
                    f"({LEASE_NAME}) expires at {when}"
                )
            try:  # expired: the holder died; take it over (the exclusive create decides between takers)
                self.fs.rm_file(self.path)
            except FileNotFoundError:
                pass
        raise ArchiveError(f"could not take the write lease of {_display(self.fs, self.root)} (other writers keep "
                           "taking it); run the encode again")

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                holder = self._holder()
                if not holder or holder.get("owner") != self.owner:
                    self.lost = "the lease was taken over by another writer"
                    return
                s3 = _s3_parts(self.fs, self.path)
                if s3 is not None:
                    out = self.fs.call_s3("put_object", Bucket=s3[0], Key=s3[1], Body=self._body(), IfMatch=self._etag)
                    self._etag = out.get("ETag")
                else:
                    self.fs.pipe_file(self.path, self._body())
            except Exception as exc:  # noqa: BLE001 - renewal retries at the next tick, until the lease expires
                if time.time() >= self._expires_at:
                    self.lost = f"could not renew the lease before it expired ({type(exc).__name__}: {exc})"
                    return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self._holder()
        if holder and holder.get("owner") == self.owner:
            try:
                self.fs.rm_file(self.path)
            except FileNotFoundError:
                pass
        if getattr(self, "_made_root", False):  # a run that wrote nothing leaves no empty archive folder
            try:
                os.rmdir(self.root)
            except OSError:
                pass

    def __enter__(self) -> ArchiveLease:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def leased(encode: Any) -> Any:
    """Decorator of an engine's encode function ``encode(src, dst, *, storage_options=..., ...)``:
    it runs holding the write lease of ``dst``."""
    import functools

    @functools.wraps(encode)
    def run(src: Any, dst: Any, *args: Any, storage_options: Any = None, **kwargs: Any) -> Any:
        with archive_lease(str(dst), storage_options) as lease:
            result = encode(src, dst, *args, storage_options=storage_options, **kwargs)
        if lease.lost:
            raise ArchiveError(
                f"this encode lost the write lease of {_display(lease.fs, lease.root)} while it wrote ({lease.lost}): "
                "another encode may have written into the archive at the same time. Check it with `coldpress "
                "verify`, then run the encode again (it adds only what is missing). If renewals fail on a slow "
                f"store, a longer lease helps: COLDPRESS_LEASE_TTL_S (now {lease.ttl:g} s)"
            )
        return result

    return run


def archive_lease(dst: str, storage_options: Any = None, *, filesystem: Any = None, ttl: float | None = None
                  ) -> ArchiveLease:
    """The (not yet taken) write lease of archive ``dst``."""
    from coldpress.transforms.sources import filesystem_for

    if filesystem is not None:
        fs, root = filesystem, str(dst)
        root = fs._strip_protocol(root)
    else:
        fs, root = filesystem_for(str(dst), storage_options)
    return ArchiveLease(fs, root, ttl=ttl)
