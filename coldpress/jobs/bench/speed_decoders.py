"""``coldpress bench speed --decoder-steps N ...``: decode time of the diffusion decoder at each step count
on the frame size, next to the coarse decode's (the ``decode`` row of the same bitstream).

Rows ``decode-diffusion-sN``: the coarse decode plus N relay steps, what ``restore --decoder diffusion
--steps N`` costs per image; the note gives the ratio to the coarse decode (the issue's target: at most
3x for 2 steps on the same CPU).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable


def diffusion_rows(args: argparse.Namespace, codec, bitstream: bytes, coarse_row: dict[str, Any], device: str,
                   sync: Callable, w: int, h: int) -> list[dict[str, Any]]:
    from coldpress.codec.diffusion.decoder import bitstream_bpp, get_decoder, seed_of
    from coldpress.errors import ColdpressError
    from coldpress.jobs.bench.speed import _speed_row, _timings

    steps_list = list(getattr(args, "decoder_steps", None) or [])
    if not steps_list or getattr(codec, "name", "") != "learned":
        return []
    try:
        decoder = get_decoder(getattr(args, "decoder_model", None), device)
    except ColdpressError as exc:
        return [{"codec": args.codec, "device": device, "stage": "decode-diffusion", "batch": 1, "width": w,
                 "height": h, "status": "skipped", "note": str(exc)}]
    bpp, seed = bitstream_bpp(bitstream, w, h), seed_of(bitstream)
    rows = []
    for steps in steps_list:
        def decode(steps: int = steps) -> None:
            decoder.refine(codec.decode(bitstream), bpp, seed, steps)

        times = _timings(decode, args.repeat, min(args.warmup, 1), sync)
        row = _speed_row(args.codec, device, f"decode-diffusion-s{steps}", 1, w, h, times)
        ratio = row["median_s"] / coarse_row["median_s"] if coarse_row.get("median_s") else None
        row["note"] = (f"codec.decode + {steps} relay step(s) of {decoder.decoder_id} "
                       f"({str(decoder.dtype).replace('torch.', '')} UNet)"
                       + (f": {ratio:.2f}x the coarse decode (median)" if ratio else ""))
        rows.append(row)
    return rows


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("diffusion decoder")
    group.add_argument("--decoder-steps", type=int, nargs="+", default=None, metavar="N",
                       help="also time the diffusion decoder at these step counts (e.g. 1 2 4), after the coarse decode")
    group.add_argument("--decoder-model", default=None, metavar="ID_OR_PATH",
                       help="diffusion decoder weights (default: the shipped default decoder)")
