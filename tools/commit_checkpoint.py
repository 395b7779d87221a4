"""Copy a training run's checkpoint into checkpoints/ for git: float16 networks (the entropy models and
gains stay float32, as in an export), no optimizer state, and the run's state.json.

    python tools/commit_checkpoint.py runs/s16 checkpoints/cp-extreme-s16

Resume it with ``cp -r checkpoints/cp-extreme-s16 runs/s16`` and ``coldpress train --run runs/s16
--reset-optimizer ...`` (the optimizer starts fresh; see checkpoints/README.md).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from coldpress.codec.export import _KEEP_FP32


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("dest", type=Path)
    args = p.parse_args()
    with safe_open(str(args.run / "checkpoint.safetensors"), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {}
        for k in f.keys():
            v = f.get_tensor(k)
            tensors[k] = v.half() if v.is_floating_point() and not k.startswith(_KEEP_FP32) else v
    args.dest.mkdir(parents=True, exist_ok=True)
    tmp = args.dest / "checkpoint.safetensors.tmp"
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(args.dest / "checkpoint.safetensors")
    shutil.copyfile(args.run / "state.json", args.dest / "state.json")
    print(f"{args.dest}: step {meta.get('step')}, {(args.dest / 'checkpoint.safetensors').stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
