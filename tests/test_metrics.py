"""PSNR, MS-SSIM and Bjøntegaard metrics against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as library_ms_ssim
from pytorch_msssim import ssim as library_ssim

from coldpress import metrics
from synthetic_images import natural_image


def _noisy(image: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(image + rng.normal(0, sigma, image.shape)), 0, 255).astype(np.uint8)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]


# -- PSNR ----------------------------------------------------------------------------------------


def test_psnr_of_a_known_error():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a + 5  # every sample off by 5: MSE 25
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25))
    b[0, 0, 0] = 100  # one sample right: MSE 25 * 191/192
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / (25 * 191 / 192)))


def test_psnr_is_capped_and_symmetric():
    a = natural_image(32, 48)
    assert metrics.psnr(a, a) == metrics.PSNR_CAP_DB
    b = _noisy(a, 4)
    assert metrics.psnr(a, b) == metrics.psnr(b, a) < metrics.PSNR_CAP_DB
    assert metrics.psnr(a, b, cap=20.0) == 20.0


def test_psnr_rejects_mismatched_images():
    a = natural_image(32, 48)
    with pytest.raises(ValueError, match="shape"):
        metrics.psnr(a, a[:16])
    with pytest.raises(ValueError, match="uint8"):
        metrics.psnr(a, a.astype(np.float32))


# -- MS-SSIM --------------------------------------------------------------------------------------


def test_ms_ssim_matches_pytorch_msssim_on_a_large_image():
    a = natural_image(176, 200, seed=3)
    b = _noisy(a, 12)
    expected = float(library_ms_ssim(_tensor(a), _tensor(b), data_range=255))
    assert metrics.ms_ssim_scales(176, 200) == 5
    assert metrics.ms_ssim(a, b) == pytest.approx(expected, abs=1e-6)
    assert metrics.ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    # The scale loop used for small images is the library's own, scale for scale.
    loop = float(metrics._ms_ssim_scales_loop(_tensor(a), _tensor(b), metrics.MS_SSIM_WEIGHTS))
    assert loop == pytest.approx(expected, abs=1e-6)


def test_ms_ssim_scales_follow_the_image_size():
    assert metrics.ms_ssim_scales(161, 500) == 5
    assert metrics.ms_ssim_scales(500, 160) == 4
    assert metrics.ms_ssim_scales(64, 96) == 3
    assert metrics.ms_ssim_scales(11, 11) == 1
    assert metrics.ms_ssim_scales(10, 300) == 0


def test_ms_ssim_on_one_scale_is_ssim():
    a = natural_image(16, 24, seed=4)
    b = _noisy(a, 10)
    expected = float(library_ssim(_tensor(a), _tensor(b), data_range=255))
    assert metrics.ms_ssim(a, b) == pytest.approx(expected, abs=1e-6)


def test_ms_ssim_on_small_images_falls_back_and_ranks_distortions():
    a = natural_image(64, 96, seed=5)
    slight, strong = metrics.ms_ssim(a, _noisy(a, 3)), metrics.ms_ssim(a, _noisy(a, 25))
    assert 0.0 < strong < slight < 1.0
    assert metrics.ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    gray = a[:, :, 1].copy()
    assert 0.0 < metrics.ms_ssim(gray, _noisy(gray, 10)) < 1.0
    with pytest.raises(ValueError, match="too small"):
        metrics.ms_ssim(a[:10], a[:10])


def test_ms_ssim_db():
    assert metrics.ms_ssim_db(0.99) == pytest.approx(20.0)
    assert metrics.ms_ssim_db(0.9) == pytest.approx(10.0)
    assert metrics.ms_ssim_db(1.0) == math.inf


# -- Bjøntegaard --------------------------------------------------------------------------------

RATES = [0.02, 0.035, 0.06, 0.1]
PSNRS = [24.1, 25.9, 27.6, 29.0]


#: The bjontegaard package's README test curves (libx265 presets measured with ffmpeg).
REF_ANCHOR = ([9487.76, 4593.60, 2486.44, 1358.24], [40.037, 38.615, 36.845, 34.851])
REF_TEST = ([9787.80, 4469.00, 2451.52, 1356.24], [40.121, 38.651, 36.970, 34.987])


@pytest.mark.parametrize("anchor, test", [
    (REF_ANCHOR, REF_TEST),
    (REF_TEST, REF_ANCHOR),
    (([9487.76, 6500.0, 4593.60, 2486.44, 1358.24], [40.037, 39.40, 38.615, 36.845, 34.851]), REF_TEST),
    (([120.0, 260.0, 515.0], [26.1, 28.9, 31.2]), ([100.0, 240.0, 530.0, 990.0], [26.4, 29.5, 32.0, 33.8])),
])
def test_bd_metrics_match_the_reference_implementation(anchor, test):
    """The JVET CTC spreadsheet's PCHIP BD-rate, as the ``bjontegaard`` package reproduces it (its
    README: same values as the JVET-T2010 Excel sheet to 10 decimals), on its own test curves."""
    bd = pytest.importorskip("bjontegaard", reason="the bjontegaard package is a test dependency")
    kw = {"method": "pchip", "require_matching_points": False, "min_overlap": 0.0}
    assert metrics.bd_rate(*anchor, *test) == pytest.approx(bd.bd_rate(*anchor, *test, **kw), abs=1e-8)
    assert metrics.bd_psnr(*anchor, *test) == pytest.approx(bd.bd_psnr(*anchor, *test, **kw), abs=1e-8)


def test_bd_rate_of_the_reference_curves_is_the_published_value():
    """Fixed values (computed by the bjontegaard package, PCHIP) so the check holds without it."""
    assert metrics.bd_rate(*REF_ANCHOR, *REF_TEST) == pytest.approx(-4.4174853506, abs=1e-8)
    assert metrics.bd_psnr(*REF_ANCHOR, *REF_TEST) == pytest.approx(0.1196927854, abs=1e-8)


def test_bd_rate_of_identical_curves_is_zero():
    assert metrics.bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)
    assert metrics.bd_psnr(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_of_half_the_rate_is_minus_50_percent():
    half = [r / 2 for r in RATES]
    assert metrics.bd_rate(RATES, PSNRS, half, PSNRS) == pytest.approx(-50.0, abs=1e-9)
    assert metrics.bd_rate(half, PSNRS, RATES, PSNRS) == pytest.approx(100.0, abs=1e-9)
    # Point order does not matter.
    assert metrics.bd_rate(RATES[::-1], PSNRS[::-1], half, PSNRS) == pytest.approx(-50.0, abs=1e-9)


def test_bd_rate_of_a_shifted_curve_sampled_elsewhere():
    # log-rate linear in quality: log R = -6 + 0.2 Q. The test curve needs 25 % more rate at every
    # quality and is sampled at other qualities, overlapping the anchor's on [31, 36] only.
    def rate(q, factor=1.0):
        return [factor * math.exp(-6 + 0.2 * v) for v in q]

    qa, qt = [30.0, 32.0, 34.0, 36.0], [31.0, 33.5, 35.0, 38.0]
    assert metrics.bd_rate(rate(qa), qa, rate(qt, 1.25), qt) == pytest.approx(25.0, abs=1e-9)
    # The same curve read the other way: 1.25x the rate = a quality loss of ln(1.25) / 0.2 dB.
    assert metrics.bd_psnr(rate(qa), qa, rate(qt, 1.25), qt) == pytest.approx(-math.log(1.25) / 0.2, abs=1e-9)


def test_bd_psnr_of_a_quality_shift():
    better = [p + 1.5 for p in PSNRS]
    assert metrics.bd_psnr(RATES, PSNRS, RATES, better) == pytest.approx(1.5, abs=1e-9)
    # Better quality at the same rates means fewer bits at the same quality.
    assert metrics.bd_rate(RATES, PSNRS, RATES, better) < 0


def test_bd_rate_over_a_test_curve_inside_the_anchor_range():
    # log-rate linear in quality; the test curve (half the rate) covers only [27, 29] of the
    # anchor's [24, 32]: the comparison is made over [27, 29] and is exact.
    qa, qt = [24.0, 26.0, 28.0, 30.0, 32.0], [27.0, 29.0]
    ra = [math.exp(-7 + 0.15 * q) for q in qa]
    rt = [0.5 * math.exp(-7 + 0.15 * q) for q in qt]
    assert metrics.bd_rate(ra, qa, rt, qt) == pytest.approx(-50.0, abs=1e-9)
    assert metrics.bd_rate(rt, qt, ra, qa) == pytest.approx(100.0, abs=1e-9)


def test_bd_rate_rejects_curves_it_cannot_compare():
    with pytest.raises(ValueError, match="do not overlap"):
        metrics.bd_rate(RATES, PSNRS, [0.2, 0.4], [30.0, 33.0])
    with pytest.raises(ValueError, match="do not overlap"):
        metrics.bd_psnr([0.01, 0.02], [20.0, 22.0], [0.05, 0.1], [20.0, 22.0])
    with pytest.raises(ValueError, match="at least 2"):
        metrics.bd_rate(RATES, PSNRS, [0.05], [26.0])
    with pytest.raises(ValueError, match="repeated quality"):
        metrics.bd_rate(RATES, PSNRS, [0.02, 0.04], [26.0, 26.0])
    with pytest.raises(ValueError, match="non-positive"):
        metrics.bd_rate(RATES, PSNRS, [0.0, 0.04], [25.0, 27.0])
    with pytest.raises(ValueError, match="non-finite"):
        metrics.bd_rate(RATES, PSNRS, [0.02, 0.04], [25.0, math.nan])
