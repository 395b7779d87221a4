"""Decode time of two or more learned models, alternating, on one machine in one run (noisy VMs).

Each model encodes the bench photo (``bench speed``'s image) once at ``--bpp``, then the models decode their
own bitstream in turn, ``--rounds`` times each; prints every time and the best:

    python tools/ab_decode_speed.py cp-extreme-s16-v4 cp-extreme-s16-v5 --size 2304x1728 --bpp 0.05 --rounds 4
"""

from __future__ import annotations

import argparse
import time

import torch

from coldpress.codec import get_codec
from coldpress.jobs.bench.speed import _speed_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--size", default="2304x1728")
    ap.add_argument("--bpp", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    w, h = map(int, args.size.split("x"))
    img, _ = _speed_image(None, w, h)
    codecs = {m: get_codec("learned", model=m, device="cpu") for m in args.models}
    data = {}
    for m, codec in codecs.items():
        data[m] = codec.encode(img, args.bpp).bitstream
        codec.forget_decodes()
        codec.decode(data[m])  # warm-up
    times: dict[str, list[float]] = {m: [] for m in codecs}
    for _ in range(args.rounds):
        for m, codec in codecs.items():
            start = time.perf_counter()
            codec.decode(data[m])
            times[m].append(time.perf_counter() - start)
    for m, t in times.items():
        print(f"{m} {w}x{h} decode s {[round(x, 2) for x in t]} best {min(t):.2f} ({w * h / 1e6 / min(t):.3f} MP/s)")


if __name__ == "__main__":
    main()
