"""Which failures are the environment's, not the input's.

An input is rejected only for what is wrong with the input. A GPU out of memory, a missing or broken
driver, expired or missing credentials, a full or read-only disk, a dropped connection or an object
store that keeps failing after botocore's retries are faults of the job's environment: they stop the
job (``EnvironmentFault``) with a message saying what to fix, and are never recorded as rejected
inputs or reported as damaged bitstreams. ``environment_cause(exc)`` says whether an exception (or
any exception in its ``__cause__``/``__context__`` chain: s3fs turns botocore errors into OSErrors) is
such a fault.
"""

from __future__ import annotations

import errno

from coldpress.errors import EnvironmentFault

_DISK_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EIO: "the storage device reported an I/O error",
    errno.ENOMEM: "the system is out of memory",
    errno.EMFILE: "the process has too many open files",
    errno.ENFILE: "the system has too many open files",
}
_GPU_MARKERS = ("CUDA error", "CUDA driver", "no CUDA GPUs", "NVIDIA driver", "cuDNN error", "CUBLAS_STATUS",
                "NCCL error", "Torch not compiled with CUDA", "device-side assert")
#: S3 error codes that say the credentials or the service are at fault, not the object.
_S3_ENVIRONMENT_CODES = {
    "ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId", "SignatureDoesNotMatch", "RequestExpired",
    "InvalidToken", "TokenRefreshRequired", "InvalidClientTokenId", "SlowDown", "ServiceUnavailable",
    "InternalError", "RequestTimeout", "Throttling", "ThrottlingException", "RequestTimeTooSkewed",
}


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 16:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _botocore_cause(exc: BaseException) -> str | None:
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - s3fs brings botocore
        return None
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        return f"no usable object-store credentials ({exc}); set AWS credentials (environment, profile or role)"
    if isinstance(exc, getattr(bx, "TokenRetrievalError", ())):
        return f"the object-store session token could not be refreshed ({exc}); log in again"
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ReadTimeoutError,
                        bx.ConnectTimeoutError, bx.ProxyConnectionError, bx.SSLError)):
        return f"the object store could not be reached ({exc}); check the endpoint and the network"
    if isinstance(exc, bx.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _S3_ENVIRONMENT_CODES:
            return (f"the object store refused the job's requests ({code}: {exc}); check the credentials "
                    "(expired tokens, keys) or wait until the service recovers")
    return None


def environment_cause(exc: BaseException) -> str | None:
    """What in the environment failed, if ``exc`` is an environmental fault; None if it may be the input's."""
    for e in _chain(exc):
        if isinstance(e, EnvironmentFault):
            return str(e)
        name = type(e).__name__
        msg = str(e)
        if name == "OutOfMemoryError" or "CUDA out of memory" in msg:
            return f"the GPU ran out of memory ({msg.splitlines()[0] if msg else name}); run fewer or smaller batches per GPU, or use --device cpu"
        if isinstance(e, (RuntimeError, AssertionError)) and any(m in msg for m in _GPU_MARKERS):
            return f"the GPU or its driver failed ({msg.splitlines()[0]}); check the driver (nvidia-smi) or use --device cpu"
        cause = _botocore_cause(e)
        if cause:
            return cause
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            return f"{_DISK_ERRNOS[e.errno]} ({type(e).__name__}: {e}); free space or fix the storage, then run the job again"
        if isinstance(e, (ConnectionError, TimeoutError)):
            return f"a connection failed ({type(e).__name__}: {e}); check the network and the endpoint, then run the job again"
        if name in ("ClientConnectionError", "ClientConnectorError", "ServerDisconnectedError", "ServerTimeoutError",
                    "ClientPayloadError"):  # aiohttp, under s3fs/gcsfs
            return f"a connection to the object store failed ({name}: {msg}); check the network, then run the job again"
    return None


def raise_if_environmental(exc: BaseException, doing: str) -> None:
    """Raise EnvironmentFault (from ``exc``) when ``exc`` is the environment's fault; ``doing`` says
    what the job was doing (e.g. "reading s3://bucket/a.jpg")."""
    cause = environment_cause(exc)
    if cause is not None:
        if isinstance(exc, EnvironmentFault):
            raise exc
        raise EnvironmentFault(f"stopped while {doing}: {cause}. No input was rejected for it; inputs already "
                               "archived are kept, and running the same command again continues with the rest") from exc
