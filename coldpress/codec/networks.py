"""Networks of the learned extreme codec.

- ``ShallowEncoder``: an AEIC-style shallow CNN analysis transform (stride-2 convolutions with GDN),
  under 1 M parameters, so that encoding is cheap on the sender side.
- ``Synthesis``: a heavier decoder (sub-pixel upsampling with residual blocks) that produces the
  coarse, fidelity-oriented reconstruction (the 0-step decode; a diffusion refiner may follow).
- ``HyperAnalysis`` / ``HyperSynthesis``: the mean-scale hyperprior (Ballé 2018, Minnen 2018) whose
  synthesis uses only convolutions, ReLU and pixel shuffles so that it can run in exact fixed point
  (see ``fixedpoint.py``): entropy parameters then decode identically on every device.
- ``CheckerboardContext``: the optional spatial context (He et al. 2021, as used by ELIC): latents
  are coded in two passes, anchors (even checkerboard squares) with the hyperprior's parameters, then
  the others with parameters refined from the decoded anchors around them. Convolutions and ReLUs
  only, so it too runs in exact fixed point.
- ``ChannelContext``: ELIC's channel-conditional context (He et al. 2022) on top of the checkerboard:
  the latent's channels, in a fixed coding order, are cut into uneven slices (16, 16, 32, 64, 64), and
  each slice's means and scales are corrected from the slices decoded before it, in both checkerboard
  passes. 1x1 convolutions and ReLUs only (fixed point, like the other entropy-parameter networks).
  ``latent_passes`` is the one schedule of those passes that training, the encoder and the decoder share.
- ``GainUnits``: per-channel gain vectors at K trained rate points, interpolated geometrically for a
  continuous rate knob ``q`` in [0, K-1] (one model for every bitrate).
- ``ExtremeCodecNet``: the whole trainable model on compressai's EntropyBottleneck and
  GaussianConditional.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from compressai.models.base import CompressionModel
from compressai.models.utils import update_registered_buffers

# Scales of the Gaussian conditional: 64 log-spaced values (compressai's defaults).
SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256.0, 64


def scale_table() -> torch.Tensor:
    return torch.exp(torch.linspace(math.log(SCALES_MIN), math.log(SCALES_MAX), SCALES_LEVELS))


@dataclass(frozen=True)
class NetConfig:
    """Architecture hyper-parameters; stored in the weights file's metadata."""

    latent_stride: int = 16  # 16 or 32: downsampling of the main latent
    enc_channels: tuple[int, ...] = (64, 96, 144)
    latent_channels: int = 192  # M
    hyper_channels: int = 128  # N
    hyper_latent_channels: int = 96
    dec_channels: tuple[int, ...] = (192, 160, 128, 96, 64)  # from coarse to fine
    rate_points: int = 6
    lambdas: tuple[float, ...] = (0.00012, 0.00025, 0.0005, 0.001, 0.002, 0.004)
    context: str = "none"  # "none" or "checkerboard"
    #: Channel slices of ELIC's channel context, in coding order (empty: none; needs the checkerboard).
    slices: tuple[int, ...] = ()

    @property
    def hyper_stride(self) -> int:
        return 4 if self.latent_stride == 16 else 2

    @property
    def total_stride(self) -> int:
        return self.latent_stride * self.hyper_stride

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


class ShallowEncoder(nn.Module):
    """x (B,3,H,W) in [0,1] -> y (B,M,H/s,W/s)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        n_down = int(math.log2(cfg.latent_stride))
        chans = list(cfg.enc_channels)
        while len(chans) < n_down - 1:
            chans.append(chans[-1])
        chans = chans[: n_down - 1]
        layers: list[nn.Module] = []
        cin = 3
        for i, c in enumerate(chans):
            layers += [conv(cin, c, 5 if i == 0 else 3, 2), GDN(c)]
            cin = c
        layers.append(conv(cin, cfg.latent_channels, 3, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def synthesis_receptive_radius(synthesis: nn.Module, channels: int, probe: int = 24) -> float:
    """Receptive-field radius of a synthesis transform, in output pixels, measured with gradients.

    The gradient of one central output pixel with respect to a ``probe`` x ``probe`` latent (float64
    copy of the network) is non-zero exactly on the latents that pixel depends on; the radius is the
    farthest of them, in output pixels (latent positions times the upsampling factor), counted from
    the output pixel. Random inputs make every leaky ReLU pass a gradient.
    """
    import copy

    net = copy.deepcopy(synthesis).double().eval()
    x = torch.randn(1, channels, probe, probe, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    out = net(x)
    factor = out.shape[-1] // probe
    cy = cx = out.shape[-1] // 2
    out[0, :, cy, cx].sum().backward()
    used = x.grad[0].abs().sum(0) > 0
    ys, xs = torch.nonzero(used, as_tuple=True)
    if ys.numel() == 0 or bool(used[0].any() or used[-1].any() or used[:, 0].any() or used[:, -1].any()):
        raise ValueError(f"the receptive field reaches the probe's border: measure with probe > {probe}")
    # A latent at index i covers output pixels [i*factor, (i+1)*factor): its far edge from the pixel.
    dy = torch.maximum((cy - ys * factor).abs(), ((ys + 1) * factor - 1 - cy).abs())
    dx = torch.maximum((cx - xs * factor).abs(), ((xs + 1) * factor - 1 - cx).abs())
    return float(torch.maximum(dy, dx).max())


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = conv(c, c)
        self.conv2 = conv(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place where a tensor has no other use (the same arithmetic: bit-identical, 8 % faster decodes).
        return self.conv2(F.leaky_relu_(self.conv1(F.leaky_relu(x, 0.1)), 0.1)).add_(x)


class Up(nn.Module):
    """Sub-pixel x2 upsampling followed by a residual block."""

    def __init__(self, cin: int, cout: int, res: bool = True):
        super().__init__()
        self.conv = conv(cin, cout * 4)
        self.shuffle = nn.PixelShuffle(2)
        self.res = ResBlock(cout) if res else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res(F.leaky_relu_(self.shuffle(self.conv(x)), 0.1))


class Synthesis(nn.Module):
    """y_hat (B,M,h,w) -> x_hat (B,3,h*s,w*s)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        n_up = int(math.log2(cfg.latent_stride))
        chans = list(cfg.dec_channels)
        while len(chans) < n_up + 1:
            chans.insert(0, chans[0])
        chans = chans[-(n_up + 1) :]
        self.head = nn.Sequential(conv(cfg.latent_channels, chans[0]), ResBlock(chans[0]))
        ups = []
        for i in range(n_up):
            # The last (full resolution) stage has no residual block: it is the costliest.
            ups.append(Up(chans[i], chans[i + 1], res=i < n_up - 1))
        self.ups = nn.Sequential(*ups)
        self.tail = conv(chans[-1], 3)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.tail(self.ups(self.head(y)))

    def stages(self, back_ups: int = 2) -> tuple[nn.Module, nn.Module]:
        """This synthesis as two modules sharing its layers, ``back(front(y))`` computing exactly what
        ``self(y)`` does: ``front`` (the head and the first upsamplings, at low resolution) and ``back``
        (the last ``back_ups`` upsamplings and the tail, which hold most of the work and of the memory),
        so that a decoder can run ``back`` on smaller tiles than ``front``."""
        k = max(0, len(self.ups) - back_ups)
        return nn.Sequential(self.head, *self.ups[:k]), nn.Sequential(*self.ups[k:], self.tail)


class HyperAnalysis(nn.Module):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        layers: list[nn.Module] = [conv(cfg.latent_channels, cfg.hyper_channels, 3), nn.LeakyReLU(0.1)]
        n_down = int(math.log2(cfg.hyper_stride))
        cin = cfg.hyper_channels
        for i in range(n_down):
            cout = cfg.hyper_latent_channels if i == n_down - 1 else cfg.hyper_channels
            layers.append(conv(cin, cout, 5, 2))
            if i < n_down - 1:
                layers.append(nn.LeakyReLU(0.1))
            cin = cout
        self.net = nn.Sequential(*layers)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class HyperSynthesis(nn.Module):
    """z_hat -> (means, scales). Convolutions, ReLU and pixel shuffles only (fixed-point friendly)."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        n_up = int(math.log2(cfg.hyper_stride))
        layers: list[nn.Module] = []
        cin = cfg.hyper_latent_channels
        for _ in range(n_up):
            layers += [conv(cin, cfg.hyper_channels * 4, 3), nn.PixelShuffle(2), nn.ReLU()]
            cin = cfg.hyper_channels
        layers += [conv(cin, cfg.hyper_channels * 3 // 2, 3), nn.ReLU()]
        layers.append(conv(cfg.hyper_channels * 3 // 2, cfg.latent_channels * 2, 3))
        self.net = nn.Sequential(*layers)

    def forward(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        means, scales = self.net(z_hat).chunk(2, dim=1)
        return means, scales


def anchor_mask(h: int, w: int, device=None) -> torch.Tensor:
    """(h, w) bool: True on the anchors of the checkerboard (row + column even), coded first."""
    ij = torch.arange(h, device=device)[:, None] + torch.arange(w, device=device)[None, :]
    return ij % 2 == 0


def refined_non_anchors(means: torch.Tensor, scales: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                        ctx: torch.Tensor, params) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, scales) with the non-anchors at (rows, cols) corrected by ``params`` (1x1 layers) from
    [means, scales, ctx] there, ``ctx`` being the context on those positions, (n, c, 1, len(rows)); the
    anchors keep the hyperprior's. Runs on ``ctx``'s device; the result is on ``means``'."""
    m_at, s_at = means[..., rows, cols].unsqueeze(2), scales[..., rows, cols].unsqueeze(2)
    dev = ctx.device
    d_means, d_scales = params(torch.cat([m_at.to(dev), s_at.to(dev), ctx], dim=1)).chunk(2, dim=1)
    means, scales = means.clone(), scales.clone()
    means[..., rows, cols] = m_at[:, :, 0] + d_means[:, :, 0].to(means.device)
    scales[..., rows, cols] = s_at[:, :, 0] + d_scales[:, :, 0].to(scales.device)
    return means, scales


class CheckerboardContext(nn.Module):
    """Entropy parameters of the non-anchor latents from the hyperprior's and the decoded anchors.

    ``context``: a 5x5 convolution over the anchors' y_hat (non-anchors zeroed); ``params``: 1x1
    convolutions over [hyper means, hyper scales, context] predicting corrections to the hyper means
    and scales. The last layer starts at zero, so a new context starts exactly at the hyperprior.
    """

    def __init__(self, cfg: NetConfig):
        super().__init__()
        m = cfg.latent_channels
        self.context = nn.Sequential(conv(m, m, 5))
        self.params = nn.Sequential(
            conv(3 * m, 2 * m, 1), nn.ReLU(), conv(2 * m, 3 * m // 2, 1), nn.ReLU(), conv(3 * m // 2, 2 * m, 1)
        )
        nn.init.zeros_(self.params[-1].weight)
        nn.init.zeros_(self.params[-1].bias)

    def forward(self, anchors_hat: torch.Tensor, means: torch.Tensor, scales: torch.Tensor):
        """(means, scales) for every position (meaningful on the non-anchors)."""
        ctx = self.context(anchors_hat)
        d_means, d_scales = self.params(torch.cat([means, scales, ctx], dim=1)).chunk(2, dim=1)
        return means + d_means, scales + d_scales

    def parameters_of(self, y: torch.Tensor, means: torch.Tensor, scales: torch.Tensor):
        """(means, scales) of every latent: the hyperprior's on the anchors, refined from the anchors as the
        decoder sees them (rounded around the hyper means; straight-through for training) elsewhere."""
        anchor = anchor_mask(*y.shape[-2:], device=y.device)
        anchors_hat = (y - means) + (torch.round(y - means) - (y - means)).detach() + means
        c_means, c_scales = self(anchors_hat * anchor, means, scales)
        return torch.where(anchor, means, c_means), torch.where(anchor, scales, c_scales)


#: Width of the hidden layers of the channel context's networks.
CHANNEL_HIDDEN = 64


class ChannelContext(nn.Module):
    """Corrections to the means and scales of slice k from the slices before it (ELIC's channel context).

    ``order`` (a buffer) is the coding order of the latent's channels: the first slice holds the
    channels that carry the most bits, so the later, larger slices are predicted from them. For every
    slice after the first there are two networks, one per checkerboard pass: ``anchor[k-1]`` sees the
    earlier slices on the anchors only (the rest is not decoded yet), ``other[k-1]`` sees them whole.
    Input: [earlier slices' y_hat, the slice's current means, its scales]; 1x1 convolutions; the last
    layer starts at zero, so a new channel context leaves the checkerboard's parameters unchanged.
    """

    def __init__(self, cfg: NetConfig):
        super().__init__()
        if sum(cfg.slices) != cfg.latent_channels or min(cfg.slices) < 1:
            raise ValueError(f"channel slices {cfg.slices} must be positive and add up to the "
                             f"{cfg.latent_channels} latent channels")
        if cfg.context != "checkerboard":
            raise ValueError("the channel context refines the checkerboard's parameters: use context='checkerboard'")
        self.slices = tuple(cfg.slices)
        self.register_buffer("order", torch.arange(cfg.latent_channels))
        self.anchor, self.other = nn.ModuleList(), nn.ModuleList()
        for k in range(1, len(self.slices)):
            cin, s = sum(self.slices[:k]) + 2 * self.slices[k], self.slices[k]
            for nets in (self.anchor, self.other):
                net = nn.Sequential(conv(cin, CHANNEL_HIDDEN, 1), nn.ReLU(), conv(CHANNEL_HIDDEN, CHANNEL_HIDDEN, 1),
                                    nn.ReLU(), conv(CHANNEL_HIDDEN, 2 * s, 1))
                nn.init.zeros_(net[-1].weight)
                nn.init.zeros_(net[-1].bias)
                nets.append(net)

    def refine(self, which: str, k: int, earlier: torch.Tensor, means: torch.Tensor, scales: torch.Tensor):
        nets = self.anchor if which == "anchor" else self.other
        d_means, d_scales = nets[k - 1](torch.cat([earlier, means, scales], dim=1)).chunk(2, dim=1)
        return means + d_means, scales + d_scales


def slice_bounds(slices: tuple[int, ...]) -> list[int]:
    """Channel offsets of the slices in coding order: [0, s0, s0 + s1, ..., M]."""
    return [0, *itertools.accumulate(slices)]


def rounding_code(y: torch.Tensor, order: torch.Tensor, slices: tuple[int, ...], rnd=torch.round):
    """The ``code`` of ``latent_passes`` for a known latent ``y``: each pass's latents rounded (``rnd``:
    exact, or straight-through for training) around that pass's means, as the coder codes them."""
    y_p, bounds = y[:, order], slice_bounds(slices)

    def code(which: str, k: int, means: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return rnd(y_p[:, bounds[k]:bounds[k + 1]] - means) + means

    return code


def latent_passes(means: torch.Tensor, scales: torch.Tensor, slices: tuple[int, ...], order: torch.Tensor,
                  spatial, channel, code):
    """The coding schedule of a model with checkerboard and channel contexts; (y_hat, means, scales).

    Passes, in order: the anchors of slice 0, 1, ... (slice 0 with the hyperprior's parameters, the
    others corrected by ``channel("anchor", k, earlier_anchors, means_k, scales_k)``), then the
    checkerboard's ``spatial(anchors_hat, means, scales)`` for the non-anchors, then the non-anchors of
    slice 0, 1, ... (corrected by ``channel("other", k, earlier_slices, ...)``). ``code(which, k,
    means_k, scales_k)`` codes one pass and returns its y_hat (valid on the pass's positions): the
    encoder rounds and entropy-codes, the decoder entropy-decodes, training rounds straight-through
    (``rounding_code``). Tensors are in channel order ``order`` inside; inputs and results are in the
    latent's own order.
    """
    anchor = anchor_mask(*means.shape[-2:], device=means.device)
    bounds = slice_bounds(slices)
    inverse = torch.argsort(order)

    def passes(which: str, base_means: torch.Tensor, base_scales: torch.Tensor, merge):
        """One checkerboard pass over every slice: (y_hat per slice, means, scales)."""
        hats, pass_means, pass_scales = [], [], []
        for k, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            m, s = base_means[:, lo:hi], base_scales[:, lo:hi]
            if k:
                m, s = channel(which, k, torch.cat(hats, dim=1), m, s)
            hats.append(merge(k, code(which, k, m, s)))
            pass_means.append(m)
            pass_scales.append(s)
        return hats, torch.cat(pass_means, dim=1), torch.cat(pass_scales, dim=1)

    a_hat, a_means, a_scales = passes("anchor", means[:, order], scales[:, order], lambda k, v: v * anchor)
    c_means, c_scales = spatial(torch.cat(a_hat, dim=1)[:, inverse], means, scales)
    full, o_means, o_scales = passes("other", c_means[:, order], c_scales[:, order],
                                     lambda k, v: torch.where(anchor, a_hat[k], v))
    y_hat = torch.cat(full, dim=1)[:, inverse]
    return (y_hat, torch.where(anchor, a_means, o_means)[:, inverse],
            torch.where(anchor, a_scales, o_scales)[:, inverse])


class GainUnits(nn.Module):
    """K learned gain vectors (and inverse gains); continuous rate knob by geometric interpolation."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        k = cfg.rate_points
        # Initialise gains log-spaced so that the rate points start apart.
        init = torch.exp(torch.linspace(-1.5, 1.5, k))[:, None].repeat(1, cfg.latent_channels)
        self.gain = nn.Parameter(init.clone())
        self.inv_gain = nn.Parameter(1.0 / init)

    def _interp(self, table: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        q = q.clamp(0, table.shape[0] - 1)
        lo = q.floor().long().clamp(max=table.shape[0] - 2)
        t = (q - lo.to(q.dtype))[:, None]
        a = table.abs()[lo] + 1e-6
        b = table.abs()[lo + 1] + 1e-6
        return (a.log() * (1 - t) + b.log() * t).exp()[:, :, None, None]

    def forward(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gain and inverse gain, each (B, M, 1, 1), for rate knobs q (B,)."""
        return self._interp(self.gain, q), self._interp(self.inv_gain, q)


class ExtremeCodecNet(CompressionModel):
    """The trainable model. ``forward`` is the training path (noisy quantization, likelihoods)."""

    def __init__(self, cfg: NetConfig = NetConfig()):
        super().__init__()
        self.cfg = cfg
        self.g_a = ShallowEncoder(cfg)
        self.g_s = Synthesis(cfg)
        self.h_a = HyperAnalysis(cfg)
        self.h_s = HyperSynthesis(cfg)
        self.gains = GainUnits(cfg)
        if cfg.context == "checkerboard":
            self.context = CheckerboardContext(cfg)
        elif cfg.context != "none":
            raise ValueError(f"unknown context {cfg.context!r}: use 'none' or 'checkerboard'")
        if cfg.slices:
            self.channel_context = ChannelContext(cfg)
        self.entropy_bottleneck = EntropyBottleneck(cfg.hyper_latent_channels)
        self.gaussian_conditional = GaussianConditional(None)

    def lambda_for(self, q: torch.Tensor) -> torch.Tensor:
        """Rate-distortion lambda at rate knob q (geometric interpolation of the trained lambdas)."""
        lams = torch.tensor(self.cfg.lambdas, device=q.device).log()
        q = q.clamp(0, len(lams) - 1)
        lo = q.floor().long().clamp(max=len(lams) - 2)
        t = q - lo.to(q.dtype)
        return (lams[lo] * (1 - t) + lams[lo + 1] * t).exp()

    def forward(self, x: torch.Tensor, q: torch.Tensor) -> dict:
        gain, inv_gain = self.gains(q)
        y = self.g_a(x) * gain
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        means, scales = self.h_s(z_hat)
        if self.cfg.context == "checkerboard":
            means, scales = self.context_parameters(y, means, scales)
        y_hat, y_likelihoods = self.gaussian_conditional(y, scales, means=means)
        # Straight-through rounding for the synthesis input (as in recent compressai training).
        y_st = torch.round(y - means).detach() + (y - means) - (y - means).detach() + means
        x_hat = self.g_s(y_st * inv_gain)
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def context_parameters(self, y: torch.Tensor, means: torch.Tensor, scales: torch.Tensor):
        """Hyperprior (means, scales) on the anchors, context-refined ones on the other latents (and,
        with channel slices, corrected slice by slice from the earlier slices)."""
        if self.cfg.slices:
            order = self.channel_context.order
            code = rounding_code(y, order, self.cfg.slices, lambda v: v + (torch.round(v) - v).detach())
            _, means, scales = latent_passes(means, scales, self.cfg.slices, order, self.context,
                                             self.channel_context.refine, code)
            return means, scales
        return self.context.parameters_of(y, means, scales)

    def load_state_dict(self, state_dict, strict: bool = True):  # noqa: D102 - strict by default
        for name, module in self.named_modules():
            if isinstance(module, EntropyBottleneck):
                update_registered_buffers(module, name, ["_quantized_cdf", "_offset", "_cdf_length"], state_dict)
            if isinstance(module, GaussianConditional):
                update_registered_buffers(
                    module, name, ["_quantized_cdf", "_offset", "_cdf_length", "scale_table"], state_dict
                )
        return nn.Module.load_state_dict(self, state_dict, strict=strict)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
