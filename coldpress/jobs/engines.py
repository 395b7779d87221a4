"""Command-line options of the distributed engines, shared by ``encode``, ``restore`` and ``bench``.

``add_engine_options(parser)`` declares each engine's options in its own argument group;
``engine_kwargs(args, engine)`` returns the keyword arguments the engine's function takes from
them (only those given, so the engine's defaults apply to the rest). Another engine adds one
entry to ``ENGINE_OPTIONS`` and its group in ``add_engine_options``.
"""

from __future__ import annotations

import argparse
from typing import Any

#: Per engine: argparse dest -> keyword argument of the engine's encode/restore function.
ENGINE_OPTIONS: dict[str, dict[str, str]] = {
    "ray": {"address": "address", "actors": "num_actors", "gpus_per_actor": "gpus_per_actor",
            "cpus_per_actor": "cpus_per_actor", "batch_size": "batch_size"},
}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; pass e.g. 2") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; pass e.g. 1 or 0.5") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The options of the distributed engines (ignored by the local engine)."""
    ray_group = parser.add_argument_group("Ray engine (--engine ray)")
    ray_group.add_argument("--address", default=None, metavar="ADDRESS",
                           help="Ray cluster to join (auto, host:6379, ray://host:10001); default: $RAY_ADDRESS, "
                           "else a local Ray instance on this machine")
    ray_group.add_argument("--actors", type=positive_int, default=None, metavar="N",
                           help="codec actors (default: one per GPU with the learned codec on a GPU cluster, "
                           "else one per --cpus-per-actor CPUs)")
    ray_group.add_argument("--gpus-per-actor", type=_non_negative, default=None, metavar="G",
                           help="GPUs per codec actor (default: 1 with the learned codec on a GPU cluster, else 0)")
    ray_group.add_argument("--cpus-per-actor", type=_non_negative, default=None, metavar="C",
                           help="CPUs per codec actor (default: a node's CPUs, at most 8, for the learned codec "
                           "without GPUs; else 1)")
    ray_group.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                           help="images per actor call (default: 4 with the learned codec, else 32)")


def engine_kwargs(args: argparse.Namespace, engine: str) -> dict[str, Any]:
    """The engine options given on the command line, as keyword arguments of ``engine``'s functions.

    Options of another engine are an error (they would otherwise be ignored without a word)."""
    from coldpress.errors import ColdpressError

    foreign = given_foreign_options(args, engine)
    if foreign:
        owners = sorted({other for other, opts in ENGINE_OPTIONS.items() if other != engine
                         and any(f"--{d.replace('_', '-')}" in foreign for d in opts)})
        raise ColdpressError(
            f"{' '.join(foreign)} only work{'s' if len(foreign) == 1 else ''} with --engine {' or '.join(owners)} "
            f"(this run uses --engine {engine}); add --engine {owners[0]} or drop {'it' if len(foreign) == 1 else 'them'}"
        )
    options = ENGINE_OPTIONS.get(engine, {})
    return {kw: getattr(args, dest) for dest, kw in options.items() if getattr(args, dest, None) is not None}


def given_foreign_options(args: argparse.Namespace, engine: str) -> list[str]:
    """Options of other engines that were given (they would be silently ignored)."""
    given = []
    for other, options in ENGINE_OPTIONS.items():
        if other == engine:
            continue
        given += [f"--{dest.replace('_', '-')}" for dest in options if getattr(args, dest, None) is not None]
    return given
