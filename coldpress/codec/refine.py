"""Encoder-side latent refinement of the learned codec (``effort`` 1 and 2).

Archives are encoded once and restored rarely, so the encoder may spend time the decoder never
does: with every network frozen, the gain-scaled latent ``u`` of one image is optimised for

    bits(z_hat) + bits(y_hat)  per coded pixel  +  lambda(q) * 255^2 * MSE(g_s(y_hat / gain), x)

(the training loss at the image's rate knob ``q``), where ``z = h_a(u)`` (so ``u``'s gradient also sees
the hyper-latent's rate), the entropy parameters come from float32 copies of the fixed-point
hyper-synthesis and checkerboard context (their dequantised weights), and rounding is either
straight-through (``ste``) or stochastic Gumbel annealing (``sga``, Yang et al. 2020: soft rounding
with a temperature annealed towards hard rounding, Gumbel noise from a seeded generator, then hard
straight-through iterations at the end). The result is only a different latent: it is coded by the
unchanged entropy-coding path and decodes with the unchanged decoder, so the bitstream format does
not change and old decoders restore it.

Deterministic: a fixed number of Adam iterations, noise from ``torch.Generator().manual_seed``,
float32 CPU convolutions (forward and input-gradient) that give the same bits for any thread count
(checked by tests/test_refine.py in other processes with 1 and 2 threads). Costly: each iteration is a
forward and backward pass of the synthesis at the coded size (about 3 s for a 128x192 image on the
loaded 2-core machine), so effort 2 is for archives that are written once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from coldpress.codec.fixedpoint import FixedPointStack
from coldpress.codec.networks import anchor_mask, latent_passes, rounding_code


@dataclass(frozen=True)
class RefinePlan:
    """How hard one effort level works: Adam ``iterations`` at learning rate ``lr`` (latent units),
    ``rounding`` "ste" or "sga" (the last ``hard_tail`` of the iterations are straight-through either
    way), and ``rounds`` refinements (each followed by a new knob search on the refined latent)."""

    iterations: int
    lr: float
    rounding: str
    rounds: int
    hard_tail: float = 0.25


#: Effort levels: 0 is the fast path (no refinement). Chosen on a 128x192 crop of a BSDS500 *training*
#: image at knob 32 (R + lambda D of the real bitstream and decode, lower is better; base 0.1103):
#: Adam lr 0.1 x 4 steps 0.1407 (worse: every latent moves by lr per step), lr 0.03 x 6 0.1084,
#: lr 0.01 x 6 0.1064, lr 0.01 x 12 0.1045 (-5 %: 8 % fewer bits, +0.14 dB); SGA lr 0.01 x 12 0.1056, so
#: at the dozen iterations a 2-core CPU affords straight-through rounding wins (SGA pays over hundreds).
EFFORTS: dict[int, RefinePlan | None] = {
    0: None,
    1: RefinePlan(iterations=6, lr=0.01, rounding="ste", rounds=1),
    2: RefinePlan(iterations=12, lr=0.01, rounding="ste", rounds=2),
}
SEED = 20200701  # Gumbel noise of SGA (any fixed value: the same in every process)
#: Refinement runs the synthesis untiled with gradients (its activations grow with the pixels): images
#: above this many pixels at the coded scale keep the effort-0 result (a memory bound, not tuned).
REFINE_MAX_PIXELS = 1 << 21


def check_effort(effort: object) -> int:
    """``effort`` as an int when it is a known level, else ValueError saying which to pass."""
    if isinstance(effort, bool) or not isinstance(effort, int) or effort not in EFFORTS:
        raise ValueError(f"effort must be one of {', '.join(map(str, EFFORTS))} (0 fast, 1 cheap refinement, "
                         f"2 full refinement), got {effort!r}; pass e.g. --effort 2")
    return effort


_FLOAT_STACKS: dict[int, tuple[FixedPointStack, list]] = {}


def float_stack(stack: FixedPointStack) -> list:
    """The ops of a fixed-point stack in float32 with its dequantised weights: ("conv", w, b),
    ("relu",), ("shuffle",); differentiable, cached per stack."""
    cached = _FLOAT_STACKS.get(id(stack))
    if cached is not None and cached[0] is stack:
        return cached[1]
    frac = [int(v) for v in stack.frac_bits]
    ops, ci = [], 0
    for op in stack.layout:
        if op == "conv":
            step = getattr(stack, f"scale{ci}").double().cpu() * 2.0 ** frac[ci]
            w = getattr(stack, f"w{ci}").double().cpu() * step[:, None, None, None]
            ops.append(("conv", w.float(), getattr(stack, f"bias{ci}").float().cpu()))
            ci += 1
            if ci == stack.n_convs:
                break
        else:
            ops.append((op,))
    _FLOAT_STACKS[id(stack)] = (stack, ops)
    return ops


def run_stack(ops: list, x: torch.Tensor) -> torch.Tensor:
    for op in ops:
        if op[0] == "conv":
            x = F.conv2d(x, op[1], op[2], padding=op[1].shape[-1] // 2)
        elif op[0] == "relu":
            x = torch.relu(x)
        else:
            x = F.pixel_shuffle(x, 2)
    return x


def _ste_round(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def _sga_round(v: torch.Tensor, tau: float, gen: torch.Generator) -> torch.Tensor:
    """Stochastic Gumbel annealing: floor(v) plus a Gumbel-softmax choice between rounding down and
    up, with logits -atanh(distance) / tau (Yang et al. 2020, eq. 6)."""
    lo = torch.floor(v.detach())
    d_down = (v - lo).clamp(1e-4, 1 - 1e-4)
    d_up = 1 - d_down
    logits = torch.stack([-torch.atanh(d_down), -torch.atanh(d_up)], dim=-1) / tau
    g = -torch.log(-torch.log(torch.rand(logits.shape, generator=gen).clamp(1e-10, 1 - 1e-7)))
    w = torch.softmax(logits + g / 1.0, dim=-1)  # Gumbel noise, then a softmax at the temperature
    return lo + w[..., 1]


class Refiner:
    """Refinement of one image's latent at one rate knob (see the module)."""

    def __init__(self, codec):
        self.codec = codec
        loaded = codec.loaded
        self.hs = float_stack(loaded.hs_fixed)
        self.ctx = float_stack(loaded.ctx_fixed) if loaded.has_context else None
        self.ep = float_stack(loaded.ep_fixed) if loaded.has_context else None
        self.channel = ({name: float_stack(stack) for name, stack in loaded.channel_fixed.items()}
                        if loaded.has_slices else None)

    def _spatial(self, anchors_hat: torch.Tensor, means: torch.Tensor, scales: torch.Tensor):
        ctx = run_stack(self.ctx, anchors_hat)
        d_means, d_scales = run_stack(self.ep, torch.cat([means, scales, ctx], dim=1)).chunk(2, dim=1)
        return means + d_means, scales + d_scales

    def _channel(self, which: str, k: int, earlier: torch.Tensor, means: torch.Tensor, scales: torch.Tensor):
        d_means, d_scales = run_stack(self.channel[f"{which}.{k}"], torch.cat([earlier, means, scales], dim=1)).chunk(2, dim=1)
        return means + d_means, scales + d_scales

    def _sliced_parameters(self, u: torch.Tensor, means: torch.Tensor, scales: torch.Tensor):
        """(means, scales) of a channel-context model, every pass's latents rounded straight-through
        around that pass's means (as coded)."""
        loaded = self.codec.loaded
        slices, order = loaded.net.cfg.slices, loaded.channel_order
        _, means, scales = latent_passes(means, scales, slices, order, self._spatial, self._channel,
                                         rounding_code(u, order, slices, _ste_round))
        return means, scales

    def loss(self, u: torch.Tensor, x: torch.Tensor, sw: int, sh: int, inv_gain: torch.Tensor, lam: float,
             rounding: str, tau: float, gen: torch.Generator) -> torch.Tensor:
        """bits per coded pixel + lam * 255^2 * MSE for the gain-scaled latent ``u``."""
        net = self.codec.net
        eb, gc = net.entropy_bottleneck, net.gaussian_conditional
        z = net.h_a(u)
        med = eb._get_medians().detach().reshape(1, -1, 1, 1)
        z_hat = _ste_round(z - med) + med
        c = z_hat.shape[1]
        z_lik, _, _ = eb._likelihood(z_hat.permute(1, 0, 2, 3).reshape(c, 1, -1))
        z_bits = -torch.log2(eb.likelihood_lower_bound(z_lik)).sum()
        means, scales = run_stack(self.hs, z_hat).chunk(2, dim=1)

        def rnd(v: torch.Tensor) -> torch.Tensor:
            return _sga_round(v, tau, gen) if rounding == "sga" else _ste_round(v)

        if self.channel is not None:
            means, scales = self._sliced_parameters(u, means, scales)
        elif self.ctx is not None:
            anchor = anchor_mask(*u.shape[-2:])
            # The anchors as the decoder sees them (rounded around the hyper means, exactly as coded).
            c_means, c_scales = self._spatial((_ste_round(u - means) + means) * anchor, means, scales)
            means, scales = torch.where(anchor, means, c_means), torch.where(anchor, scales, c_scales)
        y_hat = rnd(u - means) + means
        y_lik = gc.likelihood_lower_bound(gc._likelihood(y_hat, scales, means=means))
        y_bits = -torch.log2(y_lik).sum()
        x_hat = net.g_s(y_hat * inv_gain)[..., :sh, :sw]
        mse = (x_hat - x[..., :sh, :sw]).pow(2).mean()
        return (z_bits + y_bits) / (sw * sh) + lam * 255.0**2 * mse

    def refine(self, x: torch.Tensor, y: torch.Tensor, q16: int, sw: int, sh: int, plan: RefinePlan) -> torch.Tensor:
        """The refined unscaled latent (like ``analysis``'s output) of the padded image ``x`` at knob q16;
        ``sw`` x ``sh`` is the image's (unpadded) size at the coded scale."""
        from coldpress.codec.learned import Q_STEPS

        net = self.codec.net
        with torch.no_grad():
            q = torch.tensor([q16 / Q_STEPS], device=y.device)
            gain, inv_gain = net.gains(q)
            lam = float(net.lambda_for(q)[0])
        u = (y * gain).detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=plan.lr)
        gen = torch.Generator().manual_seed(SEED)
        soft = int(round(plan.iterations * (1 - plan.hard_tail))) if plan.rounding == "sga" else 0
        for it in range(plan.iterations):
            rounding = "sga" if it < soft else "ste"
            # SGA's temperature: from 0.5 down to 0.05 over the soft iterations (exponential decay).
            tau = 0.5 * math.exp(math.log(0.1) * it / max(1, soft - 1)) if rounding == "sga" else 0.0
            loss = self.loss(u, x, sw, sh, inv_gain, lam, rounding, tau, gen)
            (grad,) = torch.autograd.grad(loss, [u])
            opt.zero_grad(set_to_none=True)
            u.grad = grad
            opt.step()
        return (u.detach() / gain).detach()
