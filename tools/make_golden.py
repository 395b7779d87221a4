"""Write the golden bitstreams of every shipped learned model (tests/golden/), once per model.

Each golden file is a bitstream made by the current release with the pixel sha256 of its decode
(the model's own decode on CPU: float64 synthesis for v1 and v2, float32 from v3) recorded in ``tests/golden/golden.json``;
for float32 models also the sha256 of the float64 reference decode (the same on every device) and the
float32 decode's sha256 per kind of device (``--record-device`` adds this machine's); ``tests/test_golden.py`` decodes
them on every CI run, so any change that alters what a shipped bitstream decodes to (a new compressai,
a change of tiling, of the fixed-point hyper path or of the synthesis) fails CI. Images are made here
from a fixed seed (no data is copied into the repository). One image is wider than the decode tile
(1024 px), so the model's recorded tiling is pinned too.

    python tools/make_golden.py            # adds the models (and diffusion decoders) that have none yet
    python tools/make_golden.py --model ID # (re)writes one model's files: only for a new model

Shipped diffusion decoders are pinned the same way: the pixel sha256 of their restore (default steps,
and 1 step at detail 1.5) of the golden photo and wide bitstreams of the default codec model, in
``golden.json``'s ``decoders`` section (the wide one pins the decoder's UNet tiling).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from importlib import metadata
from pathlib import Path

import numpy as np

from coldpress.codec.precision_check import checked_against_reference, device_kind

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
#: (name, width, height, mode, bpp)
IMAGES = (("photo", 320, 224, "RGB", 0.05), ("wide", 1536, 96, "RGB", 0.03), ("gray", 208, 144, "L", 0.1))


def golden_image(width: int, height: int, mode: str, seed: int) -> np.ndarray:
    """A deterministic photo-like image: smooth gradients, edges and fine texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.zeros((height, width, 3))
    for c in range(3):
        acc = 96 + 40 * np.sin(xx / (17 + 5 * c) + c) * np.cos(yy / (23 - 3 * c))
        for _ in range(6):
            cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 60)
            acc += rng.uniform(-60, 60) * (((xx - cx) ** 2 + (yy - cy) ** 2) < r * r)
        acc += 12 * np.sin(xx * 0.9 + yy * 0.4 + c) + rng.normal(0, 6, (height, width))
        out[:, :, c] = acc
    pixels = np.clip(out, 0, 255).round().astype(np.uint8)
    return pixels[:, :, 0].copy() if mode == "L" else pixels


def main() -> None:
    from coldpress.codec.learned import LearnedCodec
    from coldpress.codec.models import registry
    from coldpress.transforms.records import pixels_sha256

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="model id (default: every shipped model without golden files)")
    p.add_argument("--record-device", action="store_true",
                   help="add this kind of device's pixel sha256 to the existing files of float32 models (after "
                        "checking their reference decode) instead of writing files")
    args = p.parse_args()
    index_path = GOLDEN / "golden.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"files": {}}
    if args.record_device:
        _record_device(index)
        index_path.write_text(json.dumps(index, indent=1) + "\n")
        return
    have = {entry["model_id"] for entry in index["files"].values()}
    models = args.model or [m for m in registry()["models"] if m not in have]
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for model_id in models:
        codec = LearnedCodec(model=model_id, device="cpu")
        for i, (name, w, h, mode, bpp) in enumerate(IMAGES):
            data = codec.encode(golden_image(w, h, mode, seed=i), bpp).bitstream
            with checked_against_reference() as check:
                pixels = codec.decode(data)
            fname = f"{model_id}-{name}.cprs"
            (GOLDEN / fname).write_bytes(data)
            index["files"][fname] = {
                "model_id": model_id, "width": w, "height": h, "mode": mode, "bpp": bpp,
                "bitstream_sha256": hashlib.sha256(data).hexdigest(), "pixels_sha256": pixels_sha256(pixels),
                "device_kind": device_kind(),
                "shape": list(pixels.shape), "made_with": {
                    "coldpress": metadata.version("coldpress"), "compressai": metadata.version("compressai"),
                    "torch": metadata.version("torch")},
            }
            if check.decodes:  # a float32 model: its float64 reference decode pins it on every kind of device
                assert check.within_contract, f"{fname}: the float32 decode is {check.max_levels} levels off"
                index["files"][fname]["reference_pixels_sha256"] = check.reference_sha256[0]
                index["files"][fname]["pixels_sha256_by_device"] = {device_kind(): pixels_sha256(pixels)}
            print(f"{fname}: {len(data)} bytes, {8 * len(data) / (w * h):.4f} bpp")
    index["files"] = dict(sorted(index["files"].items()))
    _pin_decoders(index)
    index_path.write_text(json.dumps(index, indent=1) + "\n")


def _record_device(index: dict) -> None:
    """Add this kind of device's pixels to the golden files of float32 models: their float32 decode
    differs from another kind's by a level at a few samples (``coldpress.codec.precision_check``), so each
    kind has its own sha256; the reference decode's sha256 must match the recorded one first."""
    from coldpress.codec.registry import decode_bitstream
    from coldpress.transforms.records import pixels_sha256

    kind = device_kind()
    for fname, entry in index["files"].items():
        if "reference_pixels_sha256" not in entry:
            continue
        with checked_against_reference() as check:
            pixels = decode_bitstream((GOLDEN / fname).read_bytes(), device="cpu")
        if check.reference_sha256 != [entry["reference_pixels_sha256"]] or not check.within_contract:
            raise SystemExit(f"{fname}: the reference decode changed or the float32 decode is {check.max_levels} "
                             "levels from it: the decoder changed; do not record this device")
        entry.setdefault("pixels_sha256_by_device", {})[kind] = pixels_sha256(pixels)
        print(f"{fname}: {kind}: {pixels_sha256(pixels)[:16]}")


#: (golden image name, steps (None: the decoder's default), detail) restored by each shipped decoder.
DECODER_CASES = (("photo", None, 1.0), ("photo", 1, 1.5), ("wide", None, 1.0))


def _pin_decoders(index: dict) -> None:
    from coldpress.codec.diffusion.weights import decoders
    from coldpress.codec.models import registry
    from coldpress.codec.registry import decode_bitstream
    from coldpress.transforms.records import pixels_sha256

    pinned = index.setdefault("decoders", {})
    codec_model = registry()["default"]
    for decoder_id in decoders():
        if any(entry["decoder_id"] == decoder_id for entry in pinned.values()):
            continue
        for name, steps, detail in DECODER_CASES:
            fname = f"{codec_model}-{name}.cprs"
            data = (GOLDEN / fname).read_bytes()
            choice = {"decoder": "diffusion", "model": decoder_id, "detail": detail, "device": "cpu",
                      **({"steps": steps} if steps else {})}
            pixels = decode_bitstream(data, decoder=choice, device="cpu")
            key = f"{decoder_id}:{fname}:steps={steps or 'default'}:detail={detail:g}"
            pinned[key] = {"decoder_id": decoder_id, "bitstream": fname, "steps": steps, "detail": detail,
                           "pixels_sha256": pixels_sha256(pixels), "shape": list(pixels.shape),
                           "made_with": {"coldpress": metadata.version("coldpress"),
                                         "diffusers": metadata.version("diffusers"),
                                         "torch": metadata.version("torch")}}
            print(f"{key}: {pinned[key]['pixels_sha256'][:16]}")
    index["decoders"] = dict(sorted(pinned.items()))


if __name__ == "__main__":
    main()
