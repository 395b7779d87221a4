"""The run manifest (``_manifest.json``): write it atomically, read it (also from layout 1).

Every manifest written carries ``checksum``: ``"sha256:" + hex`` of the manifest without that key,
serialized as it is written (``_canonical``). A manifest whose checksum does not match (a flipped
byte that still parses as JSON: a changed count, shard size or id range) is reported as damaged and
never trusted, exactly like one that does not parse; one without a checksum (written before it was
added, or by layout 1) is read as before.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from coldpress.codec.limits import loads_bounded
from coldpress.errors import ArchiveError
from coldpress.transforms.archive.layout import (
    LEGACY_MANIFEST_NAME,
    MANIFEST_NAME,
    _atomic_write,
    _display,
    _Entry,
    _makedirs,
    _resolve,
)


def write_manifest(
    dst: Any, manifest: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None, *, filesystem: Any = None
) -> None:
    """Write (replace) ``_manifest.json`` of archive ``dst`` atomically, with its ``checksum``."""
    body = json.loads(json.dumps({k: v for k, v in manifest.items() if k != CHECKSUM_KEY}, default=str))
    data = (json.dumps({**body, CHECKSUM_KEY: manifest_checksum(body)}, indent=2, sort_keys=True) + "\n").encode()
    fs, root = _resolve(dst, storage_options, filesystem)
    _makedirs(fs, root)
    _atomic_write(fs, root, MANIFEST_NAME, lambda f: f.write(data))


#: The manifest key holding its own checksum.
CHECKSUM_KEY = "checksum"
_CHECKSUM_RE = re.compile(r"sha256:[0-9a-f]{64}")


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, indent=2, sort_keys=True, default=str).encode()


def manifest_checksum(body: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of a manifest without its checksum key (its canonical JSON)."""
    return "sha256:" + hashlib.sha256(_canonical({k: v for k, v in body.items() if k != CHECKSUM_KEY})).hexdigest()


def _read_manifest(fs: Any, root: str, name: str | None = None) -> dict[str, Any] | None:
    """The manifest ``root/name``; without ``name``, ``_manifest.json`` or else the layout-1
    ``manifest.json``. None when there is none."""
    if name is None:
        return _read_manifest(fs, root, MANIFEST_NAME) or _read_manifest(fs, root, LEGACY_MANIFEST_NAME)
    path = f"{root}/{name}"
    try:
        with fs.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        manifest = loads_bounded(raw, "the manifest")
        if not isinstance(manifest, dict):
            raise ValueError("the top level is not a JSON object")
        recorded = manifest.pop(CHECKSUM_KEY, None)
        if recorded is None and any(isinstance(v, str) and _CHECKSUM_RE.fullmatch(v) for v in manifest.values()):
            raise ValueError("its checksum key is damaged")  # a flipped byte in the key's name
        if recorded is not None and recorded != manifest_checksum(manifest):
            raise ValueError("its checksum does not match its content: it was damaged after it was written")
    except ValueError as exc:
        raise ArchiveError(
            f"{_display(fs, path)} is not a valid coldpress manifest ({exc}); the data shards are "
            "unaffected: delete the manifest, and the next run on this archive writes a new one"
        ) from exc
    return manifest


def read_manifest(dst: Any, storage_options: Mapping[str, Any] | None = None, *, filesystem: Any = None) -> dict | None:
    """The manifest of archive ``dst`` (``_manifest.json``, or ``manifest.json`` in a layout-1
    archive), or None when it has none (a run that has not finished)."""
    fs, root = _resolve(dst, storage_options, filesystem)
    return _read_manifest(fs, root)


def _manifest_entry(info: Any, entry: _Entry) -> dict[str, Any] | None:
    """The manifest's description of ``entry`` when it still describes the file on storage (same
    name and size), else None (the footer must be read)."""
    if not isinstance(info, dict) or info.get("bytes") != entry.size or not isinstance(info.get("rows"), int):
        return None
    if not all(k in info for k in ("bitstream_bytes", "min_id", "max_id")):
        return None
    return info
