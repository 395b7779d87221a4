"""Image quality and rate-distortion metrics: PSNR, MS-SSIM, Bjøntegaard delta rate and delta PSNR.

- ``psnr(a, b)``: peak signal-to-noise ratio of two uint8 images in dB over their colour channels
  (the alpha of LA and RGBA images, stored losslessly by every codec, is left out), capped at
  ``PSNR_CAP_DB`` (identical images have an infinite PSNR; the cap keeps means and plots finite).
  The one PSNR of coldpress: archive rows, reports and benchmarks all use it.
- ``psnr_from_mse(mse, peak)``: the same formula on a mean squared error (training logs).
- ``ms_ssim(a, b)``: multi-scale SSIM (Wang et al. 2003) computed by ``pytorch_msssim`` with
  ``data_range=255``, 11-tap Gaussian window (sigma 1.5) and the standard five scale weights. An
  image whose smaller side is 160 px or less cannot be downsampled four times with an 11-px window,
  so fewer scales are used: the largest ``n`` with ``side > 10 * 2**(n - 1)``, with the first ``n``
  standard weights renormalised to sum to 1 (a 96x64 image gets 3 scales). The count is available
  from ``ms_ssim_scales``. Below 11 px there is no scale left and ``ms_ssim`` raises ValueError.
- ``ms_ssim_db(v)``: MS-SSIM on a decibel scale, ``-10 log10(1 - v)``, the usual axis for RD curves.
- ``bd_rate(...)``: Bjøntegaard delta rate, in percent; ``bd_psnr(...)``: delta quality, in dB.

Bjøntegaard metrics (VCEG-M33; VCEG-AM91; JVET common test conditions): each rate-distortion curve
is interpolated, the interpolants are integrated over the interval where both curves are defined,
and the mean difference is reported. Interpolation here is piecewise cubic Hermite (PCHIP,
``scipy.interpolate.PchipInterpolator``), the variant current test conditions recommend: unlike the
original single cubic polynomial it never overshoots between points and works from two points per
curve. It gives the JVET CTC spreadsheet's values (tests/test_metrics.py compares with the
``bjontegaard`` package, which reproduces that spreadsheet). ``BD_METHOD`` names the method.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator

#: PSNR reported for identical images (and the ceiling of any PSNR), in dB: the ``psnr`` column of an
#: archive row holds 99.0 for an exact reconstruction (docs/FORMAT.md).
PSNR_CAP_DB = 99.0
#: The standard MS-SSIM scale weights, finest scale first (Wang et al. 2003).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Size of the Gaussian window of MS-SSIM, in pixels.
MS_SSIM_WINDOW = 11

#: The Bjøntegaard interpolation: piecewise cubic Hermite (scipy's PchipInterpolator).
BD_METHOD = "pchip"


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape ({a.shape} vs {b.shape}); compare an image with its own decoding")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"metrics take uint8 images, got {a.dtype} and {b.dtype}; convert them to 8 bits first")
    if a.size == 0:
        raise ValueError("cannot compare empty images")
    return a, b


def _colour(a: np.ndarray) -> np.ndarray:
    """The colour channels of an image array: L of LA, RGB of RGBA, everything else as it is."""
    if a.ndim == 3 and a.shape[2] in (2, 4):
        return a[:, :, : a.shape[2] - 1]
    return a


def psnr_from_mse(mse: float, peak: float = 255.0, cap: float = PSNR_CAP_DB) -> float:
    """``10 log10(peak^2 / mse)`` in dB, at most ``cap`` (and ``cap`` for a zero error)."""
    if mse <= 0.0:
        return float(cap)
    return float(min(cap, 10.0 * math.log10(peak**2 / mse)))


def psnr(a: np.ndarray, b: np.ndarray, cap: float = PSNR_CAP_DB) -> float:
    """PSNR of two uint8 images of the same shape, in dB (peak 255, colour channels: alpha is left
    out), at most ``cap``."""
    a, b = _check_pair(a, b)
    a, b = _colour(a), _colour(b)
    return psnr_from_mse(float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)), 255.0, cap)


def ms_ssim_scales(height: int, width: int, window: int = MS_SSIM_WINDOW) -> int:
    """Number of MS-SSIM scales (1..5) usable on a ``height`` x ``width`` image; 0 when too small."""
    side = min(height, width)
    n = 0
    while n < len(MS_SSIM_WEIGHTS) and side > (window - 1) * 2**n:
        n += 1
    return n


def _to_tensor(image: np.ndarray):
    import torch

    t = torch.from_numpy(np.array(image, dtype=np.float32))  # a fresh, writable float copy
    if t.ndim == 2:
        t = t[:, :, None]
    return t.permute(2, 0, 1)[None]  # (1, C, H, W)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two uint8 images of the same shape ((H, W) or (H, W, C)), in [0, 1].

    Five scales when the smaller side exceeds 160 px (``pytorch_msssim.ms_ssim`` as is); fewer on
    smaller images, with renormalised weights (see the module docstring).
    """
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    a, b = _check_pair(a, b)
    if a.ndim not in (2, 3):
        raise ValueError(f"ms_ssim takes (H, W) or (H, W, C) images, got shape {a.shape}")
    h, w = a.shape[:2]
    levels = ms_ssim_scales(h, w)
    if levels == 0:
        raise ValueError(
            f"a {w}x{h} image is too small for MS-SSIM (each side must exceed {MS_SSIM_WINDOW - 1} px); "
            "use PSNR for images this small"
        )
    x, y = _to_tensor(a), _to_tensor(b)
    with torch.no_grad():
        if levels == len(MS_SSIM_WEIGHTS):
            value = _ms_ssim(x, y, data_range=255, size_average=True, win_size=MS_SSIM_WINDOW)
        else:
            weights = np.asarray(MS_SSIM_WEIGHTS[:levels], dtype=np.float64)
            value = _ms_ssim_scales_loop(x, y, (weights / weights.sum()).tolist())
    return float(value)


def _ms_ssim_scales_loop(x, y, weights: Sequence[float]):
    """MS-SSIM of (1, C, H, W) float tensors over ``len(weights)`` scales, finest first.

    ``pytorch_msssim.ms_ssim`` insists on five scales (it asserts a 161-px minimum side whatever the
    weights), so its scale loop is repeated here with its own building blocks, exactly as it runs it
    (with the five standard weights the result equals ``pytorch_msssim.ms_ssim``).
    """
    import torch
    import torch.nn.functional as F
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    levels = len(weights)
    weights = torch.tensor(list(weights), dtype=x.dtype)
    win = _fspecial_gauss_1d(MS_SSIM_WINDOW, 1.5).repeat([x.shape[1], 1, 1, 1])
    mcs = []
    for i in range(levels):
        ssim_per_channel, cs = _ssim(x, y, win=win, data_range=255, size_average=False)
        if i < levels - 1:
            mcs.append(torch.relu(cs))
            padding = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    stacked = torch.stack(mcs + [torch.relu(ssim_per_channel)], dim=0)  # (level, batch, channel)
    return torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean()


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a decibel scale: ``-10 log10(1 - value)`` (infinite for a perfect 1.0)."""
    if value >= 1.0:
        return math.inf
    return -10.0 * math.log10(1.0 - value)


# -- Bjøntegaard metrics ---------------------------------------------------------------------------


def _curve(rates: Sequence[float], quality: Sequence[float], which: str) -> tuple[np.ndarray, np.ndarray]:
    """(log rates, quality) of one RD curve as float arrays, validated, sorted by quality."""
    r = np.asarray(rates, dtype=np.float64).ravel()
    q = np.asarray(quality, dtype=np.float64).ravel()
    if r.shape != q.shape:
        raise ValueError(f"{which} curve has {r.size} rates but {q.size} quality values; give one of each per point")
    if r.size < 2:
        raise ValueError(f"{which} curve has {r.size} point(s); Bjøntegaard metrics need at least 2 per curve")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q))):
        raise ValueError(f"{which} curve has non-finite values (rates {r.tolist()}, quality {q.tolist()}); drop those points")
    if np.any(r <= 0):
        raise ValueError(f"{which} curve has non-positive rates {r.tolist()}; rates must be > 0 (they are log-scaled)")
    order = np.argsort(q, kind="stable")
    return np.log(r[order]), q[order]


def _strictly_increasing(x: np.ndarray, which: str, axis: str) -> None:
    if np.any(np.diff(x) <= 0):
        raise ValueError(
            f"{which} curve has repeated {axis} values {x.tolist()}; each point of an RD curve needs a "
            f"distinct {axis} (drop or merge duplicate points)"
        )


def _mean_over(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Mean over [lo, hi] of the curve through (x, y) (x strictly increasing), as BD_METHOD interpolates it."""
    return float(PchipInterpolator(x, y).integrate(lo, hi)) / (hi - lo)


def _overlap(xa: np.ndarray, xt: np.ndarray, axis: str) -> tuple[float, float]:
    lo, hi = max(xa[0], xt[0]), min(xa[-1], xt[-1])
    if not hi > lo:
        raise ValueError(
            f"the anchor's {axis} range [{xa[0]:.4g}, {xa[-1]:.4g}] and the test's [{xt[0]:.4g}, {xt[-1]:.4g}] "
            "do not overlap; Bjøntegaard metrics only compare curves over a common interval: add rate points "
            "that bring the curves into a common range"
        )
    return float(lo), float(hi)


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
) -> float:
    """Bjøntegaard delta rate of the test curve against the anchor, in percent.

    Log-rate is interpolated as a function of quality (PSNR, MS-SSIM dB, ...) on each curve (PCHIP;
    see ``BD_METHOD``), both are averaged over the overlapping quality interval, and the result is
    ``(exp(mean_test - mean_anchor) - 1) * 100``. Negative: the test codec needs fewer bits for the
    same quality (-50 means half the rate). Raises ValueError for curves with fewer than 2 points,
    repeated quality values, non-positive rates, or no quality overlap.
    """
    la, qa = _curve(anchor_rates, anchor_quality, "anchor")
    lt, qt = _curve(test_rates, test_quality, "test")
    _strictly_increasing(qa, "anchor", "quality")
    _strictly_increasing(qt, "test", "quality")
    lo, hi = _overlap(qa, qt, "quality")
    diff = _mean_over(qt, lt, lo, hi) - _mean_over(qa, la, lo, hi)
    return float((math.exp(diff) - 1.0) * 100.0)


def bd_psnr(
    anchor_rates: Sequence[float],
    anchor_psnr: Sequence[float],
    test_rates: Sequence[float],
    test_psnr: Sequence[float],
) -> float:
    """Bjøntegaard delta quality of the test curve against the anchor (dB for PSNR).

    Quality is interpolated as a function of log-rate on each curve, both are averaged over the
    overlapping log-rate interval, and the result is ``mean_test - mean_anchor``: positive means the
    test codec gives better quality at the same rate. Works for any quality axis (MS-SSIM dB too).
    """
    la, qa = _curve(anchor_rates, anchor_psnr, "anchor")
    lt, qt = _curve(test_rates, test_psnr, "test")
    order_a, order_t = np.argsort(la, kind="stable"), np.argsort(lt, kind="stable")
    la, qa, lt, qt = la[order_a], qa[order_a], lt[order_t], qt[order_t]
    _strictly_increasing(la, "anchor", "rate")
    _strictly_increasing(lt, "test", "rate")
    lo, hi = _overlap(la, lt, "log-rate")
    return float(_mean_over(lt, qt, lo, hi) - _mean_over(la, qa, lo, hi))


__all__ = [
    "BD_METHOD",
    "MS_SSIM_WEIGHTS",
    "PSNR_CAP_DB",
    "bd_psnr",
    "bd_rate",
    "ms_ssim",
    "ms_ssim_db",
    "ms_ssim_scales",
    "psnr",
]
