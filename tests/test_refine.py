"""Encoder-side latent refinement (``effort``) and the predicted knob search of the learned codec."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from coldpress.codec import decode_bitstream, get_codec
from coldpress.codec.models import default_model_available
from coldpress.codec.refine import EFFORTS, RefinePlan, Refiner, check_effort
from coldpress.errors import ColdpressError
from synthetic_images import natural_image, psnr, torch_threads

KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval" / "kodak"

pytestmark = pytest.mark.skipif(
    not default_model_available(), reason="no learned model is bundled (coldpress/codec/weights/MODELS.json)"
)


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    """A 128x192 crop of kodim23 when ../shared/data is present, else a synthetic image."""
    path = KODAK / "kodim23.png"
    if path.exists():
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB"))[192:320, 256:448].copy()
    return natural_image(128, 192, "RGB", seed=5)


def _objective(codec, img: np.ndarray, y: torch.Tensor, q16: int) -> tuple[float, float]:
    """(real bits per pixel + lambda * 255^2 * MSE of the real decode, MSE) of latent y at knob q16."""
    h, w = img.shape[:2]
    payload = codec._code_latent(y, q16)
    recon = codec._reconstruct(payload, {"q": q16, "s": 8}, w, h).astype(np.float64)
    mse = float(np.mean((recon - img) ** 2)) / 255**2
    lam = float(codec.net.lambda_for(torch.tensor([q16 / 16]))[0])
    return 8 * len(payload) / (w * h) + lam * 255**2 * mse, mse


@pytest.mark.parametrize("plan", [EFFORTS[1], EFFORTS[2], RefinePlan(12, 0.01, "sga", 1)],
                         ids=["effort1", "effort2", "sga"])
def test_refinement_lowers_rate_plus_lambda_distortion(small, plan):
    """Measured on the real bitstream and the real (float64) decode, not on the refinement's surrogate."""
    codec = get_codec("learned", device="cpu")
    h, w = small.shape[:2]
    x = codec._analysis_input(small, 8)
    y0 = codec._analysis_of(x)
    q16 = 32
    with torch.enable_grad():
        y1 = Refiner(codec).refine(x, y0, q16, w, h, plan)
    before, _ = _objective(codec, small, y0, q16)
    after, _ = _objective(codec, small, y1, q16)
    assert after < before * 0.99, (before, after)


def test_refined_bitstreams_meet_the_target_and_decode_with_the_plain_decoder(small):
    fast = get_codec("learned", device="cpu")
    slow = get_codec("learned", device="cpu", effort=1)
    for bpp in (0.05, 0.1):
        plain, refined = fast.encode(small, bpp), slow.encode(small, bpp)
        assert refined.achieved_bpp <= bpp
        # The format is unchanged: the effort-0 codec and decode_bitstream decode it alike.
        pixels = fast.decode(refined.bitstream)
        assert np.array_equal(pixels, decode_bitstream(refined.bitstream, device="cpu"))
        # The encoder keeps the better of the unrefined and refined candidates (float32 preview).
        assert psnr(small, pixels) >= psnr(small, fast.decode(plain.bitstream)) - 0.05


_ENCODE_IN_CHILD = r"""
import hashlib, sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from coldpress.codec import get_codec
img = np.load(sys.argv[2])
print(hashlib.sha256(get_codec("learned", device="cpu", effort=2).encode(img, 0.1).bitstream).hexdigest())
"""


def test_refined_encoding_is_identical_across_processes_and_thread_counts(small, tmp_path):
    img = np.ascontiguousarray(small[:96, :128])
    with torch_threads(2):
        here = hashlib.sha256(get_codec("learned", device="cpu", effort=2).encode(img, 0.1).bitstream).hexdigest()
    np.save(tmp_path / "img.npy", img)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for threads in (1,):  # another process, another thread count
        out = subprocess.run([sys.executable, "-c", _ENCODE_IN_CHILD, str(threads), str(tmp_path / "img.npy")],
                             capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip() == here, f"effort-2 encode with {threads} threads differs"


def test_effort_is_an_option_workers_rebuild_with():
    codec = get_codec("learned", device="cpu", effort=2)
    assert codec.options()["effort"] == 2
    assert get_codec("learned", **codec.options()) is codec
    assert "effort" not in get_codec("learned", device="cpu").options()
    with pytest.raises(ValueError, match="effort must be one of 0, 1, 2"):
        check_effort(3)
    with pytest.raises(ValueError, match="effort must be one of"):
        get_codec("learned", device="cpu", effort="2")


def test_knob_search_ends_at_the_highest_knob_that_fits(small):
    """The search steered by size estimates ends where the search on real codings alone does: its knob
    fits and the next one does not, in fewer codings; with nothing that fits, it reports the smallest
    size, measured or under-estimated (estimates under-count the coder's overhead), above the budget."""
    codec = get_codec("learned", device="cpu")
    assert codec.loaded.rate_estimator is not None
    y = codec.analysis(small, 8)
    q_max = (codec.net.cfg.rate_points - 1) * 16
    codings = {"estimated": 0, "coded": 0}
    # Budgets at a real size (knob 0's, 57's: that knob fits exactly) and between two (20's and 21's).
    sizes = {k: len(codec._code_latent(y, k)) for k in (0, 20, 21, 57)}
    for budget in (sizes[0], (sizes[20] + sizes[21]) // 2, sizes[57]):
        for start in (0, 40):
            for name, search in (("estimated", codec._fit_latent), ("coded", codec._fit_latent_by_codings)):
                before = codec.codings
                payload, knob = search(y, budget, start=start)
                codings[name] += codec.codings - before
                assert payload is not None and len(payload) <= budget
                assert payload == codec._code_latent(y, knob)
                assert knob == q_max or len(codec._code_latent(y, knob + 1)) > budget, (name, budget, start, knob)
    assert codings["estimated"] < codings["coded"], codings
    real = len(codec._code_latent(y, 0))
    payload, smallest = codec._fit_latent(y, 10)
    assert payload is None and 10 < smallest <= real
    assert codec._fit_latent_by_codings(y, 10) == (None, real)


def test_cli_refuses_unknown_efforts(tmp_path, capsys):
    from coldpress.jobs.bench.common import _learned_spec
    from coldpress.jobs.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["encode", str(tmp_path), str(tmp_path / "a"), "--bpp", "0.05", "--effort", "5"])
    assert exc.value.code == 2
    assert "not an effort level; pass one of 0, 1, 2" in capsys.readouterr().err
    assert _learned_spec("learned:effort=2", "effort=2", 0, None) == (2, None)
    assert _learned_spec("learned:model=m.safetensors,effort=1", "model=m.safetensors,effort=1", 0, "x") == (
        1, "m.safetensors")
    with pytest.raises(ColdpressError, match="write learned:effort=N"):
        _learned_spec("learned:fast", "fast", 0, None)
    with pytest.raises(ColdpressError, match="not a level"):
        _learned_spec("learned:effort=7", "effort=7", 0, None)
