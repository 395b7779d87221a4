"""Layout 1 to layout 2: move an archive's side files out of the way of standard Parquet readers.

Layout 1 (coldpress before the ``layout`` manifest key) kept ``manifest.json`` and
``rejected.parquet`` beside the shards, so ``pyarrow.parquet.read_table(archive)`` tried to read
the manifest as Parquet and a ``*.parquet`` glob counted rejections as images. Layout 2 names them
``_manifest.json`` and ``_rejected/rejected.parquet``. Shards do not change.

Every coldpress reader reads both layouts. Every write (an encode that resumes, on any engine)
migrates as a side effect; ``upgrade_archive`` (``coldpress upgrade ARCHIVE``) does it alone. Each
step is atomic and the old files are deleted last, so an interrupted upgrade leaves a readable
archive, and running it again finishes the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from coldpress.transforms.archive.layout import (
    ARCHIVE_LAYOUT,
    LEGACY_MANIFEST_NAME,
    LEGACY_REJECTED_NAME,
    MANIFEST_NAME,
    REJECTED_NAME,
    _exists,
    _list_dir,
    _now,
    _remove,
    _resolve,
    _side_files,
)
from coldpress.transforms.archive.manifest import _read_manifest, write_manifest
from coldpress.transforms.archive.reader import open_archive
from coldpress.transforms.archive.shards import _read_rejected_file, write_rejected
from coldpress.transforms.schema import REJECTED_SCHEMA


def upgrade_archive(path: Any, storage_options: Mapping[str, Any] | None = None, *, filesystem: Any = None) -> dict[str, Any]:
    """Rename the layout-1 side files of the archive at ``path`` to their layout-2 names.

    Returns ``{"path", "layout_before", "layout", "moved": [[old, new], ...]}``; an archive already
    in layout 2 is left as it is (``moved`` empty). Raises ArchiveError when ``path`` is not an
    archive (nothing is written then).
    """
    fs, root = _resolve(path, storage_options, filesystem)
    archive = open_archive(root, filesystem=fs)  # checks that this is a coldpress archive
    side = _side_files(fs, root, _list_dir(fs, root) or [])
    result: dict[str, Any] = {"path": archive.path, "layout_before": side.layout, "layout": ARCHIVE_LAYOUT, "moved": []}
    if not side.legacy:
        return result
    rejected_info = None
    if LEGACY_REJECTED_NAME in side.legacy:
        old = _read_rejected_file(fs, f"{root}/{LEGACY_REJECTED_NAME}").cast(REJECTED_SCHEMA)
        table = old
        if _exists(fs, f"{root}/{REJECTED_NAME}"):  # both: a write was interrupted; the new table wins
            new = _read_rejected_file(fs, f"{root}/{REJECTED_NAME}").cast(REJECTED_SCHEMA)
            keep = old.filter(pc.invert(pc.is_in(old.column("id"), value_set=new.column("id"))))
            table = pa.concat_tables([new, keep])
        rejected_info = write_rejected(root, table, filesystem=fs)
        result["moved"].append([LEGACY_REJECTED_NAME, REJECTED_NAME])
    manifest = _read_manifest(fs, root, MANIFEST_NAME) or _read_manifest(fs, root, LEGACY_MANIFEST_NAME)
    if manifest is not None:
        manifest = dict(manifest)
        manifest["layout"] = ARCHIVE_LAYOUT
        manifest["upgraded_at"] = _now().isoformat()
        if rejected_info is not None:
            manifest["rejected_table"] = rejected_info
            manifest["num_rejected"] = rejected_info["rows"]
        elif isinstance(manifest.get("rejected_table"), dict):
            manifest["rejected_table"] = dict(manifest["rejected_table"], name=REJECTED_NAME)
        write_manifest(root, manifest, filesystem=fs)
        if LEGACY_MANIFEST_NAME in side.legacy:
            result["moved"].append([LEGACY_MANIFEST_NAME, MANIFEST_NAME])
    _remove(fs, root, (LEGACY_REJECTED_NAME, LEGACY_MANIFEST_NAME))
    return result
