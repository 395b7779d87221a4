"""How many bytes a latent will code to at a rate knob, estimated in float32 without coding it.

Rate control needs the highest knob whose real bitstream fits a byte budget. A real coding runs the
fixed-point hyper-synthesis and checkerboard context (exact float64 integer arithmetic) and two range
coders: about 0.1 s at Kodak size, 0.3 s at 1 megapixel. The estimate runs the same networks as float32
approximations of the fixed-point stacks (``FixedPointStack.float_approximation``) and sums the
model's own likelihoods: about half the time, and, once one real coding of the same latent has
calibrated it (the ratio of that coding's size to its estimate: the scale table's rounding, the
coder's flush bytes), within a few bytes of the real size of a neighbouring knob
(results/search/README.md).

The estimate only steers the search: every payload the encoder keeps is a real coding, measured.
Models with channel slices (``slice_coding.py``) have no estimator (None): their search codes every
probe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from coldpress.codec.fixedpoint import checkerboard_conv, checkerboard_kernel
from coldpress.codec.networks import HyperSynthesis, anchor_mask, refined_non_anchors

#: The real bitstream's size over the estimate, before a coding has measured it: 1.005 to 1.03 on
#: photos of Kodak to 4-megapixel size between 0.03 and 0.1 bpp (the scale table's rounding, the
#: streams' flush bytes and varints), more on tiny payloads.
PRIOR_SIZE_RATIO = 1.02


class RateEstimator:
    """``estimate(y, q16, q_steps)``: the estimated payload bytes of the unscaled latent ``y`` at knob
    ``q16`` (in 1/``q_steps`` of a rate point), through the training network's own hyper-synthesis and
    checkerboard context with the exported fixed-point weights in float32."""

    def __init__(self, loaded) -> None:
        cfg = loaded.net.cfg
        self.net = loaded.net
        self.hyper = HyperSynthesis(cfg)
        self.hyper.net = loaded.hs_fixed.float_approximation()
        self.context = self.params = None
        if loaded.has_context:
            (self.context,) = loaded.ctx_fixed.float_approximation()  # one k x k convolution
            self.context_kernel = checkerboard_kernel(self.context.weight)
            self.params = loaded.ep_fixed.float_approximation()  # 1x1 convolutions and ReLUs

    @classmethod
    def for_model(cls, loaded) -> "RateEstimator | None":
        return None if loaded.has_slices else cls(loaded)

    @torch.no_grad()
    def estimate(self, y: torch.Tensor, q16: int, q_steps: int) -> float:
        net = self.net
        gain, _ = net.gains(torch.tensor([q16 / q_steps], device=y.device))
        y = y.float() * gain
        z_hat, z_likelihoods = net.entropy_bottleneck(net.h_a(y), training=False)
        means, scales = self.hyper(z_hat)
        if self.context is not None:
            means, scales = self._context_parameters(y, means, scales)
        _, y_likelihoods = net.gaussian_conditional(y, scales, means=means, training=False)
        bits = -torch.log2(z_likelihoods.double()).sum() - torch.log2(y_likelihoods.double().clamp_min(1e-9)).sum()
        return float(bits) / 8

    def _context_parameters(self, y: torch.Tensor, means: torch.Tensor, scales: torch.Tensor):
        """``CheckerboardContext.parameters_of`` (the hyperprior's parameters on the anchors, the context's
        from the rounded anchors elsewhere), computed as the fixed-point ``LoadedModel.context_parameters``
        is: the context convolution from the anchors (``checkerboard_conv``: a third of its work) and the
        parameter network on the non-anchors only (half its work): an estimate at 4 megapixels on 2 Zen 3
        cores takes about 0.55 s, 1.05 s with the whole context computed."""
        conv = self.context
        rows, cols = (~anchor_mask(*y.shape[-2:], device=y.device)).nonzero(as_tuple=True)
        anchors_hat = torch.round(y - means) + means  # read only on the anchors
        ctx = checkerboard_conv(anchors_hat, self.context_kernel, lambda x, k: F.conv2d(x, k, padding=k.shape[-1] // 2))
        ctx = ctx[..., rows, cols].unsqueeze(2) + conv.bias[None, :, None, None]
        return refined_non_anchors(means, scales, rows, cols, ctx, self.params)
