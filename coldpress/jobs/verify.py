"""``coldpress verify ARCHIVE``: decode every row and check it against its recorded checksums."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

#: Failures listed on stderr (--json lists all of them).
SHOWN_FAILURES = 50


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "verify",
        help="decode every image and check it against the checksums recorded at encode time",
        description=(
            "Check every row of ARCHIVE: the bitstream's sha256, a full decode (container checksum, "
            "codec and model present), and the sha256 of the decoded pixels against the one recorded "
            "when the row was written. Exit status 1 and a list of the failed ids when any check fails."
        ),
    )
    p.add_argument("archive", metavar="ARCHIVE", help="archive directory, local or URL (s3://bucket/archive)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    from coldpress.jobs.cli import add_models_option

    add_models_option(p)
    return p


def run(args: argparse.Namespace) -> int:
    from coldpress.jobs.cli import say, show_progress, storage_options
    from coldpress.pipelines.local import verify_local

    report = verify_local(args.archive, storage_options=storage_options(args), progress=show_progress(args))
    failures = report["failures"]
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    elif not failures:
        say(args, f"verified {report['rows']} image(s) in {report['archive']}: every bitstream is intact and "
                  "decodes to the pixels recorded at encode time" + _near_note(report))
    if failures:
        print(f"coldpress verify: {len(failures)} of {report['rows']} image(s) in {report['archive']} failed "
              "verification:", file=sys.stderr)
        for f in failures[:SHOWN_FAILURES]:
            print(f"  {f['id']}: {f['problem']}", file=sys.stderr)
        if len(failures) > SHOWN_FAILURES:
            print(f"  ... and {len(failures) - SHOWN_FAILURES} more (--json lists all)", file=sys.stderr)
        return 1
    return 0


def _near_note(report: dict) -> str:
    near = report.get("within_one_level") or []
    if not near:
        return ""
    return (f", {len(near)} of them within one level of those pixels, not exactly them: written on another "
            "kind of device (a float32 decoder rounds a few samples the other way there; within the "
            "reproducibility contract)")
