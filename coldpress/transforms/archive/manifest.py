"""The run manifest (``_manifest.json``): write it atomically, read it (also from layout 1)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

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
    """Write (replace) ``_manifest.json`` of archive ``dst`` atomically."""
    data = (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode()
    fs, root = _resolve(dst, storage_options, filesystem)
    _makedirs(fs, root)
    _atomic_write(fs, root, MANIFEST_NAME, lambda f: f.write(data))


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
        manifest = json.loads(raw)
        if not isinstance(manifest, dict):
            raise ValueError("the top level is not a JSON object")
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
