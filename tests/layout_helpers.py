"""Helpers for tests of the archive layout: turn an archive into one written before layout 2."""

from __future__ import annotations

import json
from pathlib import Path


def make_layout_1(archive: Path) -> None:
    """Rename a local archive's side files to the layout-1 names (manifest.json, rejected.parquet
    beside the shards) and drop the layout key from its manifest, as coldpress wrote it before
    layout 2. The shards are the same in both layouts."""
    manifest = json.loads((archive / "_manifest.json").read_text())
    manifest.pop("layout", None)
    manifest.pop("checksum", None)  # layout-1 manifests carried none
    for run in manifest.get("runs", []):
        run.pop("layout", None)
    if isinstance(manifest.get("rejected_table"), dict):
        manifest["rejected_table"]["name"] = "rejected.parquet"
    (archive / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (archive / "_manifest.json").unlink()
    (archive / "_rejected" / "rejected.parquet").rename(archive / "rejected.parquet")
    (archive / "_rejected").rmdir()
