"""Build .carry/ (git-ignored) for a training round on a lent GPU machine, which sees only the working tree
plus up to 64 MiB of carried paths and cannot reach ../shared/data.

    python tools/gpu/prepare_carry.py [--run runs/s16]

.carry/train: the training folders as JPEG (TIFFs re-encoded at quality 95 to fit the carry limit; JPEGs
copied byte for byte); .carry/evalsub: 12 images of eval/bsds500_test; .carry/run: the run to resume.
.whl/ (git-ignored, not built here) must hold wheels of compressai and pytorch_msssim for the device's
Python (3.12 there): `pip download --no-deps --python-version 3.12 --only-binary=:all: -d .whl compressai
pytorch_msssim` from the local package cache. Then, from the device tool: run `bash tools/gpu/round.sh MODEL_ID MINUTES` with carry [".carry", ".whl"].
"""

import argparse
import io
import shutil
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
FOLDERS = ("bsds500_train", "bsds500_val", "sun_hays80", "ucmerced")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", default="checkpoints/cp-extreme-s16", help="run folder to resume (checkpoint.safetensors + state.json)")
    args = p.parse_args()
    carry = ROOT / ".carry"
    for sub in ("train", "evalsub", "run"):
        shutil.rmtree(carry / sub, ignore_errors=True)
        (carry / sub).mkdir(parents=True)
    for folder in FOLDERS:
        for path in sorted((DATA / "train" / folder).rglob("*")):
            if not path.is_file():
                continue
            name = f"{folder}__{path.stem}"
            if path.suffix.lower() in (".jpg", ".jpeg"):
                shutil.copyfile(path, carry / "train" / f"{name}.jpg")
            elif path.suffix.lower() in (".tif", ".tiff", ".png"):
                buf = io.BytesIO()
                Image.open(path).convert("RGB").save(buf, format="JPEG", quality=95)
                (carry / "train" / f"{name}.jpg").write_bytes(buf.getvalue())
    for path in sorted((DATA / "eval" / "bsds500_test").glob("*.jpg"))[:12]:
        shutil.copyfile(path, carry / "evalsub" / path.name)
    for f in ("checkpoint.safetensors", "state.json"):
        shutil.copyfile(ROOT / args.run / f, carry / "run" / f)
    size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file())
    print(f".carry: {size / 2**20:.1f} MiB (the device carries 64 MiB at most, .whl included)")


if __name__ == "__main__":
    main()
