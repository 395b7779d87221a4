"""``coldpress upgrade ARCHIVE``: rename a layout-1 archive's side files to the layout-2 names."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "upgrade",
        help="move an older archive's manifest.json and rejected.parquet to _manifest.json and _rejected/",
        description=(
            "Archives written before layout 2 keep manifest.json and rejected.parquet beside the "
            "shards, where Parquet tools given the directory or the *.parquet glob read them as data. "
            "This moves them to _manifest.json and _rejected/rejected.parquet (shards are untouched; "
            "every step is atomic; running it again is harmless). Any later encode into the archive "
            "does the same."
        ),
    )
    p.add_argument("archive", metavar="ARCHIVE", help="archive directory, local or URL (s3://bucket/archive)")
    p.add_argument("--json", action="store_true", help="print what was done as one JSON object")
    return p


def run(args: argparse.Namespace) -> int:
    from coldpress.jobs.cli import say, storage_options
    from coldpress.transforms.archive import upgrade_archive
    from coldpress.transforms.sources import filesystem_for

    fs, _ = filesystem_for(args.archive, storage_options(args))
    result = upgrade_archive(args.archive, filesystem=fs)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif result["moved"]:
        moves = ", ".join(f"{old} -> {new}" for old, new in result["moved"])
        say(args, f"upgraded {result['path']} to layout {result['layout']}: {moves}")
    else:
        say(args, f"{result['path']} is already in layout {result['layout']}; nothing to do")
    return 0
