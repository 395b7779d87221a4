"""Errors that coldpress raises on purpose.

Every message says what was wrong and what to do about it: these strings end up in
rejected tables, CLI output and logs, read by people who cannot see the code.
"""


class ColdpressError(Exception):
    """Base class of the errors coldpress raises on purpose."""


class BitstreamError(ColdpressError):
    """A bitstream is truncated, corrupted, foreign or of an unknown format version."""


class ModelMismatchError(BitstreamError):
    """A bitstream needs a codec or model other than the one asked to decode it."""


class RateUnreachableError(ColdpressError):
    """A codec cannot fit an image into the requested bits per pixel."""


class InputRejected(ColdpressError):
    """An input cannot be archived (empty, truncated, not an image, too large, unsupported mode)."""


class ArchiveError(ColdpressError):
    """An archive is missing, unreadable, corrupt or not a coldpress archive."""


class EnvironmentFault(ColdpressError):
    """The job's environment failed (GPU, driver, credentials, disk, network): no input is to blame.

    Never recorded as a rejected input or a damaged row: the job stops with this message."""


class RejectedInputs(InputRejected):
    """A strict job finished, and some inputs were rejected; ``manifest`` is the run's manifest."""

    def __init__(self, message: str, manifest: dict | None = None):
        super().__init__(message)
        self.manifest = manifest or {}
