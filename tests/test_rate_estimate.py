"""The float32 size estimate that steers the learned codec's rate control (coldpress/codec/rate_estimate.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coldpress.codec import get_codec
from coldpress.codec.learned import Q_STEPS
from coldpress.codec.models import default_model_available

PHOTOS = Path(__file__).resolve().parents[1] / "coldpress" / "samples" / "photos"

pytestmark = pytest.mark.skipif(
    not default_model_available(), reason="no learned model is bundled (coldpress/codec/weights/MODELS.json)"
)


@pytest.fixture(scope="module")
def codec():
    return get_codec("learned", device="cpu")


def test_the_float_approximation_of_a_fixed_point_stack_computes_what_it_computes(codec):
    loaded = codec.loaded
    z_hat = torch.round(codec.net.h_a(codec.analysis(np.asarray(Image.open(PHOTOS / "coffee.jpg").convert("RGB")), 8)))
    exact = loaded.hs_fixed(z_hat)
    approx = loaded.hs_fixed.float_approximation()(z_hat)
    assert approx.dtype == torch.float32 and approx.shape == exact.shape
    assert float((approx.double() - exact).abs().max()) < 0.05 * float(exact.abs().max())


@pytest.mark.parametrize("photo", ["coffee.jpg", "rocket.jpg"])
def test_once_calibrated_by_one_coding_the_estimate_predicts_a_neighbouring_knobs_size(codec, photo):
    rgb = np.asarray(Image.open(PHOTOS / photo).convert("RGB"))
    y = codec.analysis(rgb, 8)
    estimator = codec.loaded.rate_estimator
    for knob in (8, 40, 72):
        real = {k: len(codec._code_latent(y, k)) for k in (knob, knob + 1)}
        estimate = {k: estimator.estimate(y, k, Q_STEPS) for k in (knob, knob + 1)}
        assert 0.8 < real[knob] / estimate[knob] < 1.25  # uncalibrated: within the coder's overhead
        predicted = estimate[knob + 1] * real[knob] / estimate[knob]
        assert abs(predicted - real[knob + 1]) <= 24 + 0.005 * real[knob + 1], (knob, predicted, real)

