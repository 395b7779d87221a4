"""What the benchmarks share: output folders and tables, the default image folder, codecs by name,
devices and their names."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def default_eval_folder() -> Path:
    """The Kodak set next to the repository (../shared/data/eval/kodak), else relative to the cwd."""
    import coldpress

    beside_repo = Path(coldpress.__file__).resolve().parents[2] / "shared" / "data" / "eval" / "kodak"
    if beside_repo.is_dir():
        return beside_repo
    return Path("..") / "shared" / "data" / "eval" / "kodak"


def _note(message: str) -> None:
    print(f"coldpress bench: {message}", file=sys.stderr)


def _resolve_device(choice: str) -> str:
    import torch

    from coldpress.errors import ColdpressError

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ColdpressError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu or auto")
    return choice


def _load_codec(name: str, args: argparse.Namespace):
    """(codec, None) or (None, reason it is skipped)."""
    from coldpress.codec import get_codec
    from coldpress.errors import ColdpressError

    base, _, spec = name.partition(":")
    if base != "learned":
        if spec:
            raise ColdpressError(f"codec {name!r}: only the learned codec takes options after ':' "
                                 "(learned:effort=2, learned:model=ID); name the codec alone")
        try:
            return get_codec(name), None
        except ValueError as exc:  # an unknown name: a usage error, said before any work
            raise ColdpressError(str(exc)) from None
    effort, model = _learned_spec(name, spec, getattr(args, "effort", 0), args.model)
    from coldpress.codec.models import default_model_available

    if model is None and not default_model_available():
        return None, (
            "no learned model is bundled with this installation (coldpress/codec/weights/MODELS.json); "
            "pass --model PATH.safetensors to benchmark an exported model"
        )
    try:
        options = {"effort": effort} if effort else {}
        return get_codec("learned", model=model, device=_resolve_device(args.device), **options), None
    except ColdpressError as exc:
        return None, str(exc)


def _learned_spec(name: str, spec: str, effort: int, model: str | None) -> tuple[int, str | None]:
    """(effort, model) of a learned codec entry: ``effort`` (--effort) and ``model`` (--model), or what
    ``learned:effort=N``, ``learned:model=ID_OR_PATH`` or both (``learned:model=ID,effort=N``) say, so
    that one run can compare efforts or models."""
    from coldpress.codec.refine import EFFORTS
    from coldpress.errors import ColdpressError

    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key == "effort" and value.strip().isdigit():
            effort = int(value)
        elif key == "model" and value.strip():
            model = value.strip()
        else:
            raise ColdpressError(f"codec {name!r} is not understood; write learned:effort=N with N one of "
                                 f"{', '.join(map(str, EFFORTS))}, learned:model=ID_OR_PATH, or both "
                                 "separated by a comma")
    if effort not in EFFORTS:
        raise ColdpressError(f"effort {effort} of codec {name!r} is not a level; use one of {', '.join(map(str, EFFORTS))}")
    return effort, model


def _list_images(folder: Path) -> list[Path]:
    from coldpress.transforms.sources import list_images

    return [Path(uri) for uri in list_images(str(folder))]


def _write_csv(path: Path, fields, rows: list[dict[str, Any]]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})


def _device_name(device) -> str:
    """The GPU's name, or the CPU model and torch's thread count."""
    import torch

    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        import platform

        model = platform.processor() or model
    return f"{model} ({torch.get_num_threads()} torch threads)"
