"""What an interrupted writer leaves behind, cleaned by the next one when it takes the write lease.

A process killed in the middle of writing a shard (or the rejected table, or the manifest) never
leaves a visible partial file: every file is written under a hidden temporary name
(``.<name>.tmp-<uuid>``) and moved to its name only once complete (``layout._atomic_write``). But
it can leave that temporary file, an S3 multipart upload of it that was never completed (invisible,
yet stored and billed), a Beam launcher's input listing (``_inputs/``) and the rows its workers staged
(``_staging/``, ``staging``). Holding the lease means
no other writer is running on the archive, so all of them are stale: ``clean_interrupted_writes``
removes them and says how many.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from coldpress.transforms.archive.layout import _display, _is_local
from coldpress.transforms.archive.staging import STAGING_DIR

log = logging.getLogger(__name__)

_TEMP = re.compile(r"^\.[^/]+\.tmp-[0-9a-f]{32}$")
#: Folders of an archive that hold files written through temporary names.
_FOLDERS = ("", "_rejected")
_LISTINGS = "_inputs"


def _s3_parts(fs: Any, path: str) -> tuple[str, str] | None:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "s3" not in protocol and "s3a" not in protocol:
        return None
    bucket, _, key = fs._strip_protocol(path).partition("/")
    return bucket, key


def _names(fs: Any, folder: str) -> list[str]:
    try:
        fs.invalidate_cache(folder)
        return [str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(folder, detail=True)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def abort_multipart_uploads(fs: Any, root: str) -> int:
    """Abort every incomplete S3 multipart upload under ``root/`` (0 off S3); the number aborted."""
    parts = _s3_parts(fs, root)
    if parts is None:
        return 0
    bucket, prefix = parts
    prefix = prefix.rstrip("/") + "/"
    aborted, markers = 0, {}
    while True:
        page = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **markers)
        for upload in page.get("Uploads", []) or []:
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted += 1
        if not page.get("IsTruncated"):
            return aborted
        markers = {"KeyMarker": page.get("NextKeyMarker", ""), "UploadIdMarker": page.get("NextUploadIdMarker", "")}


def clean_interrupted_writes(fs: Any, root: str) -> dict[str, int]:
    """Remove what interrupted writers left in archive ``root`` (call it holding the write lease):
    hidden temporary files, incomplete multipart uploads, stale Beam input listings and staged rows. Returns the
    counts ({} when there was nothing); a failure to clean is logged, never raised (the run goes on)."""
    root = root.rstrip("/")
    counts: dict[str, int] = {}
    try:
        temps = [f"{root}/{d}/{n}".replace("//", "/") if d else f"{root}/{n}"
                 for d in _FOLDERS for n in _names(fs, f"{root}/{d}" if d else root) if _TEMP.match(n)]
        for path in temps:
            fs.rm_file(path)
        if temps:
            counts["temporary_files"] = len(temps)
        present = _names(fs, root)
        for folder, what in ((_LISTINGS, "input_listings"), (STAGING_DIR, "staged_row_folders")):
            if folder in present:
                fs.rm(f"{root}/{folder}", recursive=True)
                counts[what] = 1
        if not _is_local(fs):
            aborted = abort_multipart_uploads(fs, root)
            if aborted:
                counts["multipart_uploads"] = aborted
    except Exception as exc:  # noqa: BLE001 - cleaning is a courtesy: never stop a run for it
        log.warning("could not clean what an interrupted run left in %s (%s: %s); the archive is unaffected",
                    _display(fs, root), type(exc).__name__, exc)
    if counts:
        log.warning("cleaned what an interrupted run left in %s: %s", _display(fs, root),
                    ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(counts.items())))
    return counts
