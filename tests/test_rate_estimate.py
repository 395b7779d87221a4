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


def test_the_estimates_context_is_the_float_checkerboard_contexts(codec):
    """The estimate's context (anchors through ``checkerboard_conv``, parameters on the non-anchors only)
    computes what the training network's ``CheckerboardContext.parameters_of`` computes with the same
    float32 weights, up to float rounding, on odd and even latent sizes."""
    from coldpress.codec.networks import CheckerboardContext

    estimator = codec.loaded.rate_estimator
    if estimator.context is None:
        pytest.skip("the default model has no spatial context")
    reference = CheckerboardContext(codec.net.cfg)
    reference.context = torch.nn.Sequential(estimator.context)
    reference.params = estimator.params
    gen = torch.Generator().manual_seed(1)
    m = codec.net.cfg.latent_channels
    for h, w in ((9, 13), (12, 16)):
        y = 4 * torch.randn(1, m, h, w, generator=gen)
        means, scales = torch.randn(1, m, h, w, generator=gen), torch.rand(1, m, h, w, generator=gen) + 0.2
        with torch.no_grad():
            want = reference.parameters_of(y, means, scales)
            got = estimator._context_parameters(y, means, scales)
        for a, b in zip(got, want):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
        assert not torch.allclose(got[0], means)  # the context changed something
