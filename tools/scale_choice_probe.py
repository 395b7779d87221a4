"""What the learned codec's scale search decides, and whether a rule could decide it without reconstructing.

At low rates the encoder fits the image at full size and at the next smaller scale and keeps the one
whose float32 preview reconstructs better (``LearnedCodec._search``). That costs a second analysis and
fit and two syntheses. For each image and target rate this records both candidates' knobs and PSNRs,
so that a cheaper rule (for example: take the smaller scale whenever the full size's knob is below a
threshold) can be checked against the real choice:

    python tools/scale_choice_probe.py ../shared/data/eval/bsds500_test --bpp 0.02 0.03 0.05 0.07 \\
        --limit 60 --max-q 80 --out results/scale-choice/bsds500_test-first60.csv

Writes one CSV row per (image, bpp): width, height, bpp, q16 and PSNR of each scale, and the margin in
dB by which the smaller scale beats the larger (positive: the smaller wins). With ``--summarize``, reads
such CSVs and prints, per file, target rate and larger scale, the bits per pixel the smaller scale codes
at, how often it won, and what the codec's rule (``LearnedCodec._scale_choice`` and the knob limit at
effort 0) gains over the knob limit alone, and how many comparisons it makes:

    python tools/scale_choice_probe.py --summarize results/scale-choice/*.csv
"""

from __future__ import annotations

import argparse
import collections
import csv
import math
import os


from coldpress.codec.learned import (SCALE_SEARCH_MARGIN_DB, SCALE_SEARCH_MAX_Q16, SCALES_EIGHTHS, LearnedCodec,
                                     _scaled_size)
from coldpress.transforms.sources import list_images, read_rgb


def budget_of(codec: LearnedCodec, w: int, h: int, bpp: float) -> int:
    """The payload budget ``Codec.encode`` gives ``_encode_rgb``."""
    return int(bpp * w * h / 8) - codec.container_overhead(w, h)


def psnr(mse: float) -> float:
    return 10 * math.log10(255.0 ** 2 / max(mse, 1e-12))


def summarize(paths: list[str]) -> None:
    codec = LearnedCodec()
    groups: dict[tuple, list] = collections.defaultdict(list)
    for path in paths:
        with open(path) as f:
            for r in csv.DictReader(f):
                w, h, bpp = int(r["width"]), int(r["height"]), float(r["bpp"])
                budget = budget_of(codec, w, h, bpp)
                sw, sh = _scaled_size(w, h, int(r["s_small"]))
                choice = codec._scale_choice(int(r["s_small"]), w, h, budget)
                groups[(os.path.basename(path), bpp, int(r["s_large"]))].append(
                    (8 * budget / (sw * sh), float(r["margin_db"]), int(r["q_large"]), choice))
    print("file, bpp, larger scale: smaller scale's coded bpp; smaller wins; mean margin; "
          "rule - knob limit alone (dB); comparisons knob limit / rule")
    print("(each row judges one pair of scales, the first two that fit from 8/8 down; where the rule takes the "
          "smaller scale it may then compare that one with the next smaller, which no row counts)")
    for key in sorted(groups, key=lambda k: (k[0], k[1], -k[2])):
        rows = groups[key]
        wins = sum(m > SCALE_SEARCH_MARGIN_DB for _, m, _, _ in rows)
        gain, before, after = 0.0, 0, 0
        for _, m, q, choice in rows:
            compared = q <= SCALE_SEARCH_MAX_Q16
            old = compared and m > SCALE_SEARCH_MARGIN_DB
            new = choice == "smaller" or (choice == "compare" and old)
            gain += (m if new else 0.0) - (m if old else 0.0)
            before += compared
            after += choice == "compare" and compared
        cs = [c for c, _, _, _ in rows]
        print(f"{key[0]}, {key[1]}, {key[2]}/8: {min(cs):.3f}-{max(cs):.3f}; {wins}/{len(rows)}; "
              f"{sum(m for _, m, _, _ in rows) / len(rows):+.2f}; {gain / len(rows):+.3f}; {before} / {after}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--summarize", nargs="+", metavar="CSV", help="summarize earlier outputs instead")
    ap.add_argument("--bpp", type=float, nargs="+", default=[0.03])
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--every", type=int, default=1, help="every n-th image of the folder (sorted)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-q", type=int, default=SCALE_SEARCH_MAX_Q16,
                    help="compare when the larger scale's knob (1/16ths) is at most this (default: the codec's)")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.summarize:
        return summarize(args.summarize)
    if not args.folder or not args.out:
        ap.error("give a folder of images and --out (or --summarize CSV...)")
    codec = LearnedCodec(model=args.model)
    paths = list_images(args.folder)[:: args.every]
    paths = paths[: args.limit] if args.limit else paths
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["image", "width", "height", "bpp", "s_large", "q_large", "psnr_large",
                      "s_small", "q_small", "psnr_small", "margin_db"])
        for path in paths:
            rgb = read_rgb(path)
            h, w = rgb.shape[:2]
            for bpp in args.bpp:
                budget = budget_of(codec, w, h, bpp)
                fits = []
                for eighths in SCALES_EIGHTHS:
                    payload, q16 = codec._fit(rgb, eighths, budget)
                    if payload is None:
                        continue
                    fits.append((eighths, q16, payload))
                    if len(fits) == 2:
                        break
                if len(fits) < 2 or fits[0][1] > args.max_q:
                    continue  # the search would not compare two scales here
                (sl, ql, pl), (ss, qs, ps) = fits
                ml = codec._preview_mse(rgb, pl, {"q": ql, "s": sl})
                ms = codec._preview_mse(rgb, ps, {"q": qs, "s": ss})
                codec.forget_decodes()
                out.writerow([os.path.basename(path), w, h, bpp, sl, ql, f"{psnr(ml):.4f}", ss, qs,
                              f"{psnr(ms):.4f}", f"{10 * math.log10(ml / max(ms, 1e-12)):.4f}"])
                f.flush()


if __name__ == "__main__":
    main()
