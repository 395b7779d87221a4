"""Encoder-side choices of the raster path that need no training, measured on real rasters: what each
buys per band against JPEG 2000 at the same bytes (issue 11's quality gap).

    .venv/bin/python tools/raster_encoder_choices.py ../shared/data/geo/RGB.byte.tif --bpp 0.1 --codec learned

Variants (each the baseline with one change, set by replacing the module's function or constant for
the one encode, then restored):

- ``baseline``: what ``coldpress encode`` does (full valid range per band, nearest-value fill blurred
  with sigma 4, single-band weight 2.0);
- ``fill-pushpull``: invalid pixels filled by a push-pull pyramid (each level the mean of the valid
  pixels below it, pulled back up and blended): smoother than the nearest-value fill;
- ``fill-mean``: invalid pixels set to the band's valid mean (flat, but a step at the mask's edge);
- ``fill-blur16``: the nearest-value fill blurred with sigma 16;
- ``range-stretch``: each band's full valid range stretched over the 256 levels even when it spans
  fewer (the baseline keeps integer bands' scale at least 1, so uint8 bands stay exact);
- ``range-p0.1``: each band mapped over its 0.1-99.9 percentile range (values outside clipped);
- ``range-group``: one map per band group (the group's lowest minimum and highest maximum), keeping the
  bands' relative levels as in the photos the codec learned from;
- ``weight-1`` / ``weight-3``: a last single-band group gets the bytes of 1 or 3 bands (not 2).

Prints one line per variant (bytes, per-band PSNR, mean) and the JPEG 2000 line; ``--json PATH``
writes them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _pushpull(plane: np.ndarray, valid: np.ndarray) -> np.ndarray:
    if valid.all():
        return plane
    if not valid.any():
        return np.zeros_like(plane)
    h, w = plane.shape
    vals, wts = np.where(valid, plane, 0.0), valid.astype(np.float64)
    levels = [(vals, wts)]
    while min(levels[-1][0].shape) > 1:
        v, m = levels[-1]
        hh, ww = (v.shape[0] + 1) // 2 * 2, (v.shape[1] + 1) // 2 * 2
        v = np.pad(v, ((0, hh - v.shape[0]), (0, ww - v.shape[1])))
        m = np.pad(m, ((0, hh - m.shape[0]), (0, ww - m.shape[1])))
        sv = v.reshape(hh // 2, 2, ww // 2, 2).sum(axis=(1, 3))
        sm = m.reshape(hh // 2, 2, ww // 2, 2).sum(axis=(1, 3))
        levels.append((sv, sm))
    v, m = levels[-1]
    est = np.where(m > 0, v / np.maximum(m, 1e-12), 0.0)
    for v, m in reversed(levels[:-1]):
        up = np.kron(est, np.ones((2, 2)))[:v.shape[0], :v.shape[1]]
        from scipy import ndimage

        up = ndimage.uniform_filter(up, 3, mode="nearest")
        mean = np.where(m > 0, v / np.maximum(m, 1e-12), 0.0)
        a = np.clip(m, 0, 1)
        est = a * mean + (1 - a) * up
    return np.where(valid, plane, est[:h, :w])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("raster")
    p.add_argument("--bpp", type=float, default=0.1)
    p.add_argument("--codec", default="learned")
    p.add_argument("--variants", nargs="+", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    from scipy import ndimage

    from coldpress.codec import get_codec
    from coldpress.jobs.bench.rd_raster import Source, measure_jp2
    from coldpress.transforms import raster
    from coldpress.transforms.raster import encode as enc_mod

    src = Source(Path(args.raster))
    codec = get_codec(args.codec)
    base_fill, base_map, base_weight = enc_mod._fill_invalid, enc_mod._band_map, enc_mod.SINGLE_BAND_WEIGHT

    def blur16(plane, valid):
        if valid.all() or not valid.any():
            return base_fill(plane, valid)
        idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
        return np.where(valid, plane, ndimage.gaussian_filter(plane[idx[0], idx[1]], 16.0, mode="nearest"))

    def mean_fill(plane, valid):
        return plane if valid.all() else np.where(valid, plane, plane[valid].mean() if valid.any() else 0.0)

    pct = {b: (float(np.percentile(src.data[b][src.valid[b]], 0.1)), float(np.percentile(src.data[b][src.valid[b]], 99.9)))
           for b in range(src.count)}
    groups = raster.band_groups(src.count)
    group_of = {b: g for g in groups for b in g}

    def run(name: str) -> dict:
        enc_mod._fill_invalid, enc_mod._band_map, enc_mod.SINGLE_BAND_WEIGHT = base_fill, base_map, base_weight
        calls = iter(range(src.count))
        if name == "fill-pushpull":
            enc_mod._fill_invalid = _pushpull
        elif name == "fill-mean":
            enc_mod._fill_invalid = mean_fill
        elif name == "fill-blur16":
            enc_mod._fill_invalid = blur16
        elif name == "range-p0.1":
            def pmap(lo, hi, dtype):
                b = next(calls)
                lo2, hi2 = pct[b]
                return lo2, max((hi2 - lo2) / 255.0, 1e-9)
            enc_mod._band_map = pmap
        elif name == "range-stretch":
            def smap(lo, hi, dtype):
                next(calls)
                return lo, max((hi - lo) / 255.0, 1e-9)
            enc_mod._band_map = smap
        elif name == "range-group":
            lo_all = [src.lo[b] for b in range(src.count)]
            hi_all = [src.hi[b] for b in range(src.count)]

            def gmap(lo, hi, dtype):
                b = next(calls)
                g = group_of[b]
                return base_map(min(lo_all[k] for k in g), max(hi_all[k] for k in g), dtype)
            enc_mod._band_map = gmap
        elif name.startswith("weight-"):
            enc_mod.SINGLE_BAND_WEIGHT = float(name.split("-")[1])
        try:
            e = raster.encode_raster(src.bytes, src.name, codec, args.bpp)
        finally:
            enc_mod._fill_invalid, enc_mod._band_map, enc_mod.SINGLE_BAND_WEIGHT = base_fill, base_map, base_weight
        decoded = raster.decode_package(e.package).transpose(2, 0, 1)
        s = src.score(decoded)
        return {"variant": name, "bytes": len(e.package), "psnr_per_band": s["psnr_per_band"], "psnr": s["psnr"]}

    variants = args.variants or ["baseline", "fill-pushpull", "fill-mean", "fill-blur16", "range-stretch", "range-p0.1", "range-group"] + (
        ["weight-1", "weight-3"] if src.count % 3 == 1 else [])
    out = []
    for name in variants:
        r = run(name)
        out.append(r)
        print(f"{src.name} {args.bpp} {name:<14} {r['bytes']:6d} B {r['psnr_per_band']} mean {r['psnr']:.2f}", flush=True)
    base = next((r for r in out if r["variant"] == "baseline"), out[0])
    jp2 = measure_jp2(src, args.bpp, base["bytes"])
    out.append({"variant": "jp2 at baseline's bytes", "bytes": jp2["bytes"],
                "psnr_per_band": json.loads(jp2["psnr_per_band"]) if jp2["psnr_per_band"] else None, "psnr": jp2["psnr"]})
    print(f"{src.name} {args.bpp} {'jp2':<14} {jp2['bytes']} B {out[-1]['psnr_per_band']} mean {jp2['psnr']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"raster": src.name, "bpp": args.bpp, "codec": args.codec,
                                               "results": out}, indent=1) + "\n")


if __name__ == "__main__":
    main()
