"""Exact, device-independent evaluation of the networks that compute entropy parameters.

Learned codecs break when the decoder computes slightly different Gaussian scales than the encoder
did: a scale that lands on the other side of a scale-table boundary selects another CDF and the
range decoder produces garbage (compressai's "black blocks on another GPU"). coldpress designs this
out: every network that feeds the entropy coder (the hyper-synthesis and, in models with a spatial
context, the checkerboard context and its parameter network) runs in fixed point.

- Weights are integers (per-output-channel scale, 12-bit signed), activations are integers with a
  per-layer number of fractional bits chosen by calibration.
- Convolutions of integer tensors are computed in float64, where every product and partial sum is an
  exact integer below 2**53, so the result is the same for any summation order, thread count or device.
- Rescaling, bias, ReLU and rounding are single IEEE-754 operations applied element-wise one at a
  time (no fused multiply-add), which every device rounds identically.

So means and scale indexes are bit-identical wherever the model runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHT_BITS = 12
ACT_LIMIT = float(2**16)  # activations stay within +-2**16 after rounding
INPUT_FRAC_BITS = 6


def _exact_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Convolution of integer-valued float64 tensors; exact on every backend.

    Every product and partial sum is an integer below 2**53, so any summation order gives the same
    result; only algorithms that transform their inputs (Winograd, FFT) would not. On CPU, float64
    convolutions run as im2col and a matrix product (oneDNN takes no float64). On CUDA the convolution
    is written as unfold and a matrix product, so that cuDNN's algorithm choice never enters. No global
    backend flag is switched here: a switch is process-wide, and one made in one thread changed the
    convolutions (and, restored out of order, every later one) of the other threads.
    """
    if x.device.type == "cpu":
        return F.conv2d(x, w, padding=w.shape[-1] // 2)
    n, _, h, width = x.shape
    k = w.shape[-1]
    cols = F.unfold(x, k, padding=k // 2)  # (n, c*k*k, h*w)
    return (w.reshape(w.shape[0], -1) @ cols).reshape(n, w.shape[0], h, width)


def checkerboard_kernel(w: torch.Tensor) -> torch.Tensor:
    """The k x k (k odd) convolution ``w`` of a checkerboard's anchors (row + column even), evaluated at
    its non-anchors, rearranged as one convolution of the two anchor phases of a 2 x 2 pixel-unshuffle,
    [(0,0), (1,1)], into the two non-anchor phases, [(0,1), (1,0)], at half resolution: a kernel of radius
    (k // 2 + 1) // 2 (3 x 3 for k = 5) holding every tap whose row plus column offset is odd, the only
    taps that reach an anchor from a non-anchor. For ``checkerboard_conv``; build it once per weight."""
    cout, c, p = w.shape[0], w.shape[1], w.shape[-1] // 2
    r = (p + 1) // 2
    kernel = w.new_zeros(2 * cout, 2 * c, 2 * r + 1, 2 * r + 1)
    for o, (pr, pc) in enumerate(((0, 1), (1, 0))):
        for i, (qr, qc) in enumerate(((0, 0), (1, 1))):
            for di in range(-p, p + 1):
                for dj in range(-p, p + 1):
                    a, b = pr + di - qr, pc + dj - qc
                    if a % 2 == 0 and b % 2 == 0:
                        kernel[o * cout:(o + 1) * cout, i * c:(i + 1) * c, a // 2 + r, b // 2 + r] = w[:, :, di + p, dj + p]
    return kernel


def checkerboard_conv(x: torch.Tensor, kernel: torch.Tensor, conv=F.conv2d) -> torch.Tensor:
    """The convolution whose ``checkerboard_kernel`` is ``kernel`` (zero padding) of the anchors of ``x``
    (whatever ``x`` holds elsewhere is never read), at the non-anchor positions: (n, cout, h, w), zero on
    the anchors. The dense half-resolution kernel does 9/25 of the full convolution's multiply-adds (3/2
    of the useful taps' alone, in one convolution instead of a gather: a 4-megapixel latent's context in
    float32 on 2 Zen 3 cores 0.08 s, against 0.17 s gathering the taps). ``conv(x, kernel)`` pads by the
    kernel's half width: ``F.conv2d`` with that padding for estimates, ``_exact_conv`` for the fixed-point
    stacks, whose integer sums are exact in any order, so the values are exactly the full convolution's.
    """
    n, _, h, wd = x.shape
    cout = kernel.shape[0] // 2
    phases = F.pixel_unshuffle(F.pad(x, (0, wd % 2, 0, h % 2)), 2)  # channel ci * 4 + 2 * row + col
    out = conv(torch.cat([phases[:, 0::4], phases[:, 3::4]], dim=1), kernel)
    zeros = torch.zeros_like(out[:, :cout])
    full = torch.stack([zeros, out[:, :cout], out[:, cout:], zeros], dim=2).flatten(1, 2)
    return F.pixel_shuffle(full, 2)[..., :h, :wd]


class FixedPointStack(nn.Module):
    """Integer version of a ``net`` Sequential of convolutions, ReLUs and pixel shuffles (for example
    ``networks.HyperSynthesis``); built by ``from_float`` or loaded from tensors. The output (of the
    last convolution) is float64 and not rounded."""

    def __init__(self, layout: list[str], n_convs: int):
        super().__init__()
        # layout: the sequence of ops: "conv", "shuffle", "relu" (from the float module).
        self.layout = list(layout)
        self.n_convs = n_convs
        for i in range(n_convs):
            self.register_buffer(f"w{i}", torch.zeros(0, dtype=torch.int16))
            self.register_buffer(f"scale{i}", torch.zeros(0, dtype=torch.float64))
            self.register_buffer(f"bias{i}", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("frac_bits", torch.zeros(n_convs + 1, dtype=torch.int32))

    @staticmethod
    def layers(float_module: nn.Module) -> list[nn.Module]:
        """The layers of a Sequential, or of a module's ``net`` Sequential."""
        return list(float_module.net if hasattr(float_module, "net") else float_module)

    @classmethod
    def layout_of(cls, float_module: nn.Module) -> list[str]:
        ops = []
        for m in cls.layers(float_module):
            if isinstance(m, nn.Conv2d):
                ops.append("conv")
            elif isinstance(m, nn.PixelShuffle):
                ops.append("shuffle")
            elif isinstance(m, nn.ReLU):
                ops.append("relu")
            else:
                raise TypeError(f"hyper-synthesis layer {type(m).__name__} has no fixed-point form")
        return ops

    @classmethod
    def from_float(cls, float_module: nn.Module, calibration_inputs: list[torch.Tensor],
                   input_frac_bits: int | None = INPUT_FRAC_BITS) -> "FixedPointStack":
        """Quantize a trained module; activation ranges come from ``calibration_inputs``.

        ``input_frac_bits``: fractional bits of the input; None calibrates them like the other layers.
        """
        layout = cls.layout_of(float_module)
        convs = [m for m in cls.layers(float_module) if isinstance(m, nn.Conv2d)]
        fp = cls(layout, len(convs))
        # Activation range at the input of each conv (and of the output), measured in float.
        maxima = [0.0] * (len(convs) + 1)
        with torch.no_grad():
            for z in calibration_inputs:
                x = z.double()
                ci = 0
                for op, m in zip(layout, cls.layers(float_module)):
                    if op == "conv":
                        maxima[ci] = max(maxima[ci], float(x.abs().max()))
                        x = F.conv2d(x, m.weight.double(), m.bias.double(), padding=m.padding)
                        ci += 1
                    else:
                        x = m(x)
                maxima[ci] = max(maxima[ci], float(x.abs().max()))
        frac = []
        for i, mx in enumerate(maxima):
            if i == 0 and input_frac_bits is not None:
                frac.append(input_frac_bits)
            else:
                # Leave 4x headroom over the calibrated maximum.
                frac.append(int(max(0, min(12, math.floor(math.log2(ACT_LIMIT / (4 * max(mx, 1e-3))))))))
        fp.frac_bits = torch.tensor(frac, dtype=torch.int32)
        for i, m in enumerate(convs):
            w = m.weight.detach().double()
            step = w.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / (2 ** (WEIGHT_BITS - 1) - 1)
            setattr(fp, f"w{i}", torch.round(w / step[:, None, None, None]).to(torch.int16))
            # acc * scale converts the integer accumulator to real units.
            setattr(fp, f"scale{i}", (step * 2.0 ** (-frac[i])).contiguous())
            setattr(fp, f"bias{i}", m.bias.detach().double().contiguous())
        return fp

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Buffers are created empty; take the stored shapes before the strict copy.
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if key in state_dict and buf is not None and buf.shape != state_dict[key].shape:
                self._buffers[name] = torch.empty_like(state_dict[key], dtype=buf.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _checkerboard_kernel(self) -> torch.Tensor:
        """``checkerboard_kernel`` of the first convolution (float64), built once for these weights."""
        key = (self.w0.data_ptr(), self.w0.device)
        if getattr(self, "_checkerboard", (None,))[0] != key:
            self._checkerboard = (key, checkerboard_kernel(self.w0.double()))
        return self._checkerboard[1]

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, at: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The output in float64, bit-identical on every device, thread count and process.

        ``at``: (rows, cols) of non-anchor positions of a checkerboard: the first convolution is then a
        checkerboard context's, of the anchors only, evaluated on the non-anchors (``checkerboard_conv``)
        and taken at those positions (an anchor there would read 0); the output is (n, c, 1, len(rows)),
        and every later layer must work position by position (1x1, ReLU).
        """
        frac = [int(v) for v in self.frac_bits]
        x = torch.round(inputs.double() * 2.0 ** frac[0])
        ci = 0
        for op in self.layout:
            if op == "conv":
                w = getattr(self, f"w{ci}").double()
                if at is not None and ci == 0:
                    acc = checkerboard_conv(x, self._checkerboard_kernel(), _exact_conv)[..., at[0], at[1]].unsqueeze(2)
                elif at is not None and w.shape[-1] != 1:
                    raise ValueError("a stack computed at some positions must be 1x1 after its first convolution")
                else:
                    acc = _exact_conv(x, w)
                y = acc * getattr(self, f"scale{ci}")[None, :, None, None]
                y = y + getattr(self, f"bias{ci}")[None, :, None, None]
                ci += 1
                if ci == self.n_convs:
                    x = y
                    break
                x = torch.round(y * 2.0 ** frac[ci]).clamp_(-ACT_LIMIT, ACT_LIMIT)
            elif op == "shuffle":
                if at is not None:
                    raise ValueError("a stack computed at some positions cannot shuffle pixels")
                x = F.pixel_shuffle(x, 2)
            elif op == "relu":
                x = torch.relu(x)
        return x

    def float_approximation(self) -> nn.Sequential:
        """A float32 Sequential computing about what this stack computes (the dequantized integer weights,
        without the activations' rounding): for estimates only (``rate_estimate.py``), never for coding,
        since it is neither exact nor the same on every device."""
        frac = [int(v) for v in self.frac_bits]
        layers: list[nn.Module] = []
        ci = 0
        for op in self.layout:
            if op == "conv":
                w = getattr(self, f"w{ci}").double() * (getattr(self, f"scale{ci}") * 2.0 ** frac[ci])[:, None, None, None]
                conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], padding=w.shape[-1] // 2)
                conv.weight.data.copy_(w.float())
                conv.bias.data.copy_(getattr(self, f"bias{ci}").float())
                layers.append(conv)
                ci += 1
                if ci == self.n_convs:
                    break
            elif op == "shuffle":
                layers.append(nn.PixelShuffle(2))
            elif op == "relu":
                layers.append(nn.ReLU())
        return nn.Sequential(*layers).to(self.w0.device).eval().requires_grad_(False)
