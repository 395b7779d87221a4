"""How much a channel context could buy on a codec checkpoint's frozen transforms (issue 12's ELIC slices).

Two measurements on a folder of images, at several rate knobs, with the checkpoint's hyperprior and
checkerboard context (estimated bits of the rounded latent):

1. how the latent's bits spread over its channels (how many channels carry 50, 80, 90, 99 % of them);
2. for slices of the channels in rate order, how much of the remaining residual y - mean of each slice
   a least-squares fit on the earlier slices' decoded values (and the slice's own scales) explains,
   which bounds what ELIC's channel context can predict linearly at one position.

    python tools/latent_channel_probe.py checkpoints/cp-extreme-s16/checkpoint.safetensors \\
        ../shared/data/train/bsds500_val --limit 30 --slices 2,2,4,6,178

(a held-out training folder: the decision is not made on an evaluation set.)
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from coldpress.codec.export import load_checkpoint
from coldpress.codec.networks import slice_bounds
from coldpress.transforms.sources import list_images, read_rgb


@torch.no_grad()
def latents(net, paths: list[str], q: float):
    """(y, means, scales) per image at knob q: the hyperprior's parameters refined by the checkerboard."""
    stride = net.cfg.total_stride
    for path in paths:
        rgb = read_rgb(path)
        h, w = rgb.shape[:2]
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
        x = F.pad(x, (0, (-w) % stride, 0, (-h) % stride), mode="replicate")
        gain, _ = net.gains(torch.tensor([q]))
        y = net.g_a(x) * gain
        z_hat, _ = net.entropy_bottleneck(net.h_a(y), training=False)
        means, scales = net.h_s(z_hat)
        if net.cfg.context == "checkerboard":
            means, scales = net.context_parameters(y, means, scales)
        yield y, means, scales


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("folder")
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--knobs", type=float, nargs="+", default=[0.0, 1.0, 3.0, 5.0])
    p.add_argument("--slices", default="2,2,4,6,178", help="channel slices in rate order (their sum: the latent's channels)")
    args = p.parse_args()
    torch.set_num_threads(2)
    net, _ = load_checkpoint(args.checkpoint)
    paths = list_images([args.folder])[: args.limit]
    slices = [int(v) for v in args.slices.split(",")]
    bounds = slice_bounds(slices)
    for q in args.knobs:
        coded = list(latents(net, paths, q))
        bits = torch.zeros(net.cfg.latent_channels, dtype=torch.float64)
        for y, means, scales in coded:
            _, lik = net.gaussian_conditional(y, scales, means=means, training=False)
            bits += -torch.log2(lik.clamp_min(1e-9))[0].sum((1, 2)).double()
        ranked, order = bits.sort(descending=True)
        share = ranked.cumsum(0) / ranked.sum()
        print(f"knob {q}: channels carrying 50/80/90/99 % of the latent's bits: "
              f"{[int((share < t).sum()) + 1 for t in (0.5, 0.8, 0.9, 0.99)]}")
        residual = torch.cat([(y - m)[0][order].flatten(1) for y, m, _ in coded], 1).double()
        decoded = torch.cat([(torch.round(y - m) + m)[0][order].flatten(1) for y, m, _ in coded], 1).double()
        scale = torch.cat([s[0][order].flatten(1) for _, _, s in coded], 1).double()
        for k in range(1, len(slices)):
            lo, hi = bounds[k], bounds[k + 1]
            inputs = torch.cat([decoded[:lo], scale[lo:hi], torch.ones(1, decoded.shape[1], dtype=torch.float64)]).T
            target = residual[lo:hi].T
            fit = torch.linalg.lstsq(inputs, target).solution
            before, after = float(target.var(0).mean()), float((target - inputs @ fit).var(0).mean())
            print(f"  slice {k} (channels {lo}-{hi - 1} by rate): residual variance {before:.5f} -> {after:.5f} "
                  f"({100 * (1 - after / max(before, 1e-12)):.1f} % explained by the earlier slices)")


if __name__ == "__main__":
    main()
