"""``coldpress stac ARCHIVE [--out catalog/]``: a STAC Collection with one Item per archived raster."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "stac",
        help="write a STAC Collection and one Item per archived raster",
        description=(
            "Write a STAC Collection (collection.json) and one Item per archived raster (footprint in "
            "WGS 84, datetime, projection and raster extensions, an asset pointing at the archive shard "
            "with file:size and file:checksum), so that STAC tools search the archive by place and time. "
            "Photos get no Item. Exit status 1 when a raster row's metadata is damaged or hostile "
            "(listed on stderr; the others are catalogued)."
        ),
    )
    p.add_argument("archive", metavar="ARCHIVE", help="archive directory, local or URL (s3://bucket/archive)")
    p.add_argument("--out", metavar="DIR", help="local folder of the catalog (default: ARCHIVE/_stac for a local archive)")
    p.add_argument("--collection-id", metavar="ID", help="id of the Collection (default: the archive's folder name)")
    p.add_argument("--no-checksum", action="store_true",
                   help="leave out file:checksum (computing it reads every shard holding a raster)")
    return p


def run(args: argparse.Namespace) -> int:
    import os

    from coldpress.errors import ColdpressError
    from coldpress.jobs.cli import say, storage_options
    from coldpress.transforms.stac import write_catalog

    out = args.out
    if out is None:
        if "://" in str(args.archive) and not str(args.archive).startswith("file://"):
            raise ColdpressError("the archive is remote: pass --out DIR, a local folder for the STAC catalog")
        out = os.path.join(str(args.archive), "_stac")
    if "://" in str(out):
        raise ColdpressError(f"--out {out}: the catalog is written to a local folder; pass a local path and copy it")
    path, n, left_out = write_catalog(args.archive, out, storage_options(args), collection_id=args.collection_id,
                                      checksums=not args.no_checksum)
    say(args, f"wrote {path}: a STAC Collection with {n} Item(s)")
    if not left_out:
        return 0
    print(f"{len(left_out)} raster row(s) got no Item: their metadata is damaged or hostile. To catalog them, "
          "restore the archive from a replica, or encode their sources into a new archive:", file=sys.stderr)
    for rid, why in left_out:
        print(f"  {rid}: {why}", file=sys.stderr)
    return 1
