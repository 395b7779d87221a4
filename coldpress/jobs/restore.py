"""``coldpress restore ARCHIVE DST (--id ID ... | --all)``: decode archived images into files."""

from __future__ import annotations

import argparse
from typing import Any

from coldpress.defaults import DEFAULT_RESTORE_FORMAT

#: Output formats offered by --format (restored_name/write_image accept these).
FORMATS = ("png", "webp", "tiff", "bmp", "jpeg")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "restore",
        help="decode archived images into files",
        description=(
            "Decode images of ARCHIVE into files under DST, named after their ids (the source paths "
            "relative to the encoded SRC, with the extension of --format). Only the row groups "
            "holding the requested ids are read."
        ),
    )
    p.add_argument("archive", metavar="ARCHIVE", help="archive directory, local or URL (s3://bucket/archive)")
    p.add_argument("dst", metavar="DST", help="folder to write the images into, local or URL")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="ids", action="append", metavar="ID",
                       help="id of an image to restore (repeat for several); `coldpress inspect --ids` lists them")
    which.add_argument("--all", action="store_true", help="restore every image of the archive")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default=DEFAULT_RESTORE_FORMAT,
                   help=f"file format of the restored images (default: {DEFAULT_RESTORE_FORMAT}; jpeg drops alpha)")
    return p


def run(args: argparse.Namespace) -> int:
    from coldpress.jobs.cli import say, show_progress, storage_options
    from coldpress.pipelines.local import restore_local

    paths = restore_local(
        args.archive, args.dst, ids=None if args.all else args.ids, fmt=args.fmt,
        storage_options=storage_options(args), progress=show_progress(args),
    )
    say(args, f"restored {len(paths)} image(s) to {args.dst}")
    return 0
