"""The ``coldpress`` command.

Each subcommand is a module ``coldpress/jobs/<name>.py`` with two functions:

    add_parser(subparsers) -> argparse.ArgumentParser   # declares the subcommand and its options
    run(args) -> int                                      # does the work, returns the exit status

and one line in ``SUBCOMMANDS`` below. Modules import heavy dependencies inside ``run`` so that
``coldpress --help`` stays fast. Every subcommand also gets the common options (``--endpoint-url``,
``--quiet``). A ColdpressError (or an I/O error) ends the command with one line on stderr and exit
status 1, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Any, Sequence

from coldpress.errors import ColdpressError
from coldpress.versions import coldpress_version

#: Subcommand modules under coldpress/jobs/, in the order ``--help`` lists them.
SUBCOMMANDS = (
    "encode",
    "restore",
    "inspect",
    "stac",
    "verify",
    "upgrade",
    "train",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coldpress",
        description=(
            "Batch archival compression of imagery at extreme bitrates. Paths are local paths or "
            "fsspec URLs (s3://bucket/prefix, gs://..., file://...); S3 credentials come from the usual "
            "AWS environment variables and config files."
        ),
    )
    parser.add_argument("--version", action="version", version=f"coldpress {coldpress_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"coldpress.jobs.{name}")
        sub = module.add_parser(subparsers)
        _add_common_options(sub)
        sub.set_defaults(_run=module.run)
    return parser


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument(
        "--endpoint-url",
        metavar="URL",
        default=None,
        help="endpoint of an S3-compatible store (MinIO, Ceph, R2, ...) for s3:// paths; default: "
        "$COLDPRESS_S3_ENDPOINT_URL, then $AWS_ENDPOINT_URL, then AWS itself",
    )
    group.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summaries")


def storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """fsspec storage options for the command's paths (the S3 endpoint when one is given)."""
    endpoint = getattr(args, "endpoint_url", None)
    if not endpoint:  # the engines fall back to $COLDPRESS_S3_ENDPOINT_URL / $AWS_ENDPOINT_URL
        return None
    return {"client_kwargs": {"endpoint_url": endpoint}}


def show_progress(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars: not with --quiet, and only on a terminal."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def say(args: argparse.Namespace, message: str = "") -> None:
    """Print a summary line to stdout unless --quiet."""
    if not getattr(args, "quiet", False):
        print(message)


def add_models_option(p: argparse.ArgumentParser) -> None:
    """``--models DIR``: folders of exported models (not shipped) that bitstreams may need."""
    p.add_argument("--models", action="append", metavar="DIR", default=None,
                   help="folder holding exported learned models (<model id>.safetensors) that the archive's "
                   "bitstreams name, when they are not shipped ones (repeatable; adds to $COLDPRESS_MODELS, "
                   "which the engines' workers read)")


def _use_model_folders(args: argparse.Namespace) -> None:
    folders = getattr(args, "models", None)
    if folders:
        from coldpress.codec.models import MODELS_PATH_ENV

        missing = [f for f in folders if not os.path.isdir(f)]
        if missing:
            raise ColdpressError(f"--models {missing[0]} is not a folder; pass the folder that holds the .safetensors files")
        current = os.environ.get(MODELS_PATH_ENV)
        os.environ[MODELS_PATH_ENV] = os.pathsep.join([os.path.abspath(f) for f in folders] + ([current] if current else []))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``coldpress`` command with ``argv`` (default: sys.argv[1:]); return the exit status."""
    # Deprecation notices of third-party imports (compressai scripts functions with torch.jit) say
    # nothing to a user of the command.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        _use_model_folders(args)
        return int(args._run(args) or 0)
    except ColdpressError as exc:
        print(f"coldpress {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        print(f"coldpress {args.command}: error: {_describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"coldpress {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`coldpress inspect ... | head`)
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except (OSError, ValueError):
            pass
        return 141


def _describe_os_error(exc: OSError) -> str:
    what = {
        FileNotFoundError: "not found",
        PermissionError: "permission denied",
        IsADirectoryError: "is a directory, expected a file",
        NotADirectoryError: "is not a directory",
    }.get(type(exc), exc.strerror or "I/O error")
    target = exc.filename or (exc.args[0] if exc.args else "")
    return f"{target}: {what}; check the path and your access to it"


if __name__ == "__main__":
    sys.exit(main())
