"""ELIC's channel context on the checkerboard (``--slices``): the shared coding schedule, training it on
frozen transforms, its fixed-point export, one-stream coding that decodes exactly (in another process
and thread count too), the rate estimate, refinement, and strict loading."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from coldpress.codec import get_codec
from coldpress.codec.models import ORDER_KEY, load_model
from coldpress.codec.networks import ExtremeCodecNet, NetConfig, latent_passes
from coldpress.errors import ColdpressError
from coldpress.jobs.train import main as train_main
from synthetic_images import natural_image, torch_threads

STEPS = ["--batch", "2", "--crop", "64", "--threads", "1", "--log-every", "1", "--checkpoint-minutes", "0"]
SLICES = "16,16,32,64,64"


@pytest.fixture(scope="module")
def sliced_run(tmp_path_factory) -> Path:
    """A tiny run: 2 steps of the whole codec with a checkerboard, then 2 of its contexts with slices added."""
    folder = tmp_path_factory.mktemp("images")
    for i in range(4):
        Image.fromarray(natural_image(80, 96, "RGB", seed=i)).save(folder / f"img{i}.png")
    run = tmp_path_factory.mktemp("run")
    assert train_main(["--run", str(run), "--data", str(folder), "--steps", "2", "--context", "checkerboard",
                       *STEPS]) == 0
    (run / "before.safetensors").write_bytes((run / "checkpoint.safetensors").read_bytes())
    assert train_main(["--run", str(run), "--steps", "2", "--lr", "1e-2", "--slices", SLICES,
                       "--train-only", "context", *STEPS]) == 0
    return run


@pytest.fixture(scope="module")
def sliced_codec(sliced_run, tmp_path_factory):
    """The run exported, with random corrections in its channel networks (2 tiny steps barely move them):
    every pass then depends on the passes before it, so a schedule bug desynchronises the decode."""
    ckpt = sliced_run / "checkpoint.safetensors"
    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(ckpt))
    gen = torch.Generator().manual_seed(7)
    for k in tensors:
        if k.startswith("channel_context.") and k.endswith(("4.weight", "4.bias")):
            tensors[k] = torch.randn(tensors[k].shape, generator=gen) * 0.05
    perturbed = tmp_path_factory.mktemp("perturbed")
    save_file(tensors, str(perturbed / "checkpoint.safetensors"), metadata=meta)
    (perturbed / "state.json").write_text((sliced_run / "state.json").read_text())
    out = tmp_path_factory.mktemp("weights")
    assert train_main(["--run", str(perturbed), "--steps", "0", "--model-id", "tiny-slices-v0",
                       "--export-to", str(out)]) == 0
    return get_codec("learned", model=str(out / "tiny-slices-v0.safetensors"), device="cpu")


def test_the_schedule_with_one_slice_is_the_checkerboard():
    """With a single slice and no channel corrections the passes give the checkerboard's parameters."""
    torch.manual_seed(0)
    net = ExtremeCodecNet(NetConfig(context="checkerboard")).eval()
    for p in net.context.params[-1].parameters():
        torch.nn.init.normal_(p, std=0.1)
    y = torch.randn(1, 192, 6, 8) * 3
    means, scales = torch.randn(1, 192, 6, 8), torch.rand(1, 192, 6, 8) + 0.2
    with torch.no_grad():
        want = net.context_parameters(y, means, scales)
        order = torch.randperm(192)
        _, got_m, got_s = latent_passes(means, scales, (192,), order, net.context, None,
                                        lambda which, k, m, s: torch.round(y[:, order] - m) + m)
    assert torch.allclose(got_m, want[0], atol=1e-6) and torch.allclose(got_s, want[1], atol=1e-6)


def test_slices_are_added_to_a_run_and_trained_alone(sliced_run):
    state = json.loads((sliced_run / "state.json").read_text())
    assert state["config"]["slices"] == [16, 16, 32, 64, 64] and state["train_only"] == "context"
    before = load_file(str(sliced_run / "before.safetensors"))
    after = load_file(str(sliced_run / "checkpoint.safetensors"))
    new = set(after) - set(before)
    assert new and all(k.startswith("channel_context.") for k in new)
    for k in before:
        if not k.startswith("context."):  # the checkerboard trains with it; everything else is frozen
            assert torch.equal(before[k], after[k]), k
    order = after["channel_context.order"]
    assert sorted(order.tolist()) == list(range(192)) and not torch.equal(order, torch.arange(192))
    assert after["channel_context.anchor.3.4.weight"].abs().sum() > 0  # the zero-initialised last layer learned


def test_the_channel_context_is_trained_alone(sliced_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.safetensors", "state.json"):
        (run / name).write_bytes((sliced_run / name).read_bytes())
    before = load_file(str(run / "checkpoint.safetensors"))
    assert train_main(["--run", str(run), "--steps", "1", "--lr", "1e-2", "--train-only", "channel", *STEPS]) == 0
    after = load_file(str(run / "checkpoint.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("channel_context.") for k in changed), sorted(changed)[:5]


def test_a_run_keeps_its_slices(sliced_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.safetensors", "state.json"):
        (run / name).write_bytes((sliced_run / name).read_bytes())
    with pytest.raises(SystemExit, match="keeps its slices"):
        train_main(["--run", str(run), "--steps", "1", "--slices", "32,32,64,64", *STEPS])


def test_the_export_is_fixed_point_and_codes_one_stream(sliced_codec):
    loaded = sliced_codec.loaded
    assert loaded.has_slices and sorted(loaded.channel_fixed) == sorted(
        f"{w}.{k}" for w in ("anchor", "other") for k in range(1, 5))
    assert "channel_slices" in sliced_codec.describe()
    photo = natural_image(96, 128, "RGB", seed=5)
    for q16 in (0, 40, 80):
        y = sliced_codec.analysis(photo, 8)
        payload = sliced_codec._code_latent(y, q16)
        # The decoder rebuilds exactly the latent the encoder rounded, pass by pass.
        y_scaled, z = sliced_codec._hyper(y, q16)
        z_hat = loaded.net.entropy_bottleneck.decompress(loaded.net.entropy_bottleneck.compress(z), z.shape[-2:])
        means, _ = sliced_codec._latent_parameters(y_scaled, z_hat)
        decoded = sliced_codec._decode_latent(payload, tuple(z.shape[-2:]))
        assert torch.equal(decoded, torch.round(y_scaled - means) + means), q16
        # One rANS stream for y: z's flush and length, y's flush, and nothing per pass. Within 8 %: this
        # barely trained model codes many tail symbols, which the coder escapes in fewer bits than the
        # estimate's likelihood floor prices them (a trained model lands within 1 %).
        estimate = sliced_codec.estimate_bits(photo, q16) / 8
        assert abs(len(payload) - (2 * 4 + 2) - estimate) / estimate < 0.08, (q16, len(payload), estimate)


def test_a_sliced_model_searches_its_knob_on_real_codings(sliced_codec):
    """No float estimate of the slice passes exists (``rate_estimate.py``): every probe is coded."""
    assert sliced_codec.loaded.rate_estimator is None
    photo = natural_image(96, 128, "RGB", seed=5)
    y = sliced_codec.analysis(photo, 8)
    budget = len(sliced_codec._code_latent(y, 40)) + 1
    payload, knob = sliced_codec._fit_latent(y, budget)
    assert knob >= 40 and payload == sliced_codec._code_latent(y, knob) and len(payload) <= budget


_DECODE_IN_CHILD = r"""
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from coldpress.codec import get_codec
codec = get_codec("learned", model=sys.argv[2], device="cpu")
print(hashlib.sha256(codec.decode(open(sys.argv[3], "rb").read()).tobytes()).hexdigest())
"""


def test_decodes_are_identical_in_another_process_and_thread_count(sliced_codec, tmp_path):
    photo = natural_image(128, 160, "RGB", seed=6)
    data = sliced_codec.encode(photo, 0.5).bitstream
    with torch_threads(2):
        here = hashlib.sha256(sliced_codec.decode(data).tobytes()).hexdigest()
    (tmp_path / "b.cpb").write_bytes(data)
    child = subprocess.run([sys.executable, "-c", _DECODE_IN_CHILD, "1", str(sliced_codec.loaded.path),
                            str(tmp_path / "b.cpb")], capture_output=True, text=True, check=True)
    assert child.stdout.strip() == here


def test_the_verify_decode_reuses_the_scale_search_reconstruction(sliced_codec):
    """A float32 model's preview is its decode: the decode that follows an encode (verify-on-write)
    returns the reconstruction the scale search made instead of running the synthesis again."""
    from coldpress.codec import container

    photo = natural_image(96, 128, "RGB", seed=10)
    result = sliced_codec.encode(photo, 0.5)
    from coldpress.codec.learned import LearnedCodec

    fresh = LearnedCodec(model=str(sliced_codec.loaded.path), device="cpu")  # its own instance: no memo
    want = fresh.decode(result.bitstream)
    assert fresh.syntheses == 1
    b = container.unpack(result.bitstream)
    sliced_codec._reconstruct(b.payload, b.params, b.width, b.height, preview=True)  # as the scale search does
    before = sliced_codec.syntheses
    assert np.array_equal(sliced_codec.decode(result.bitstream), want)
    assert sliced_codec.syntheses == before
    assert np.array_equal(sliced_codec.decode(result.bitstream), want)  # kept once: the next decode computes
    assert sliced_codec.syntheses == before + 1


def test_refinement_codes_a_sliced_model(sliced_codec):
    codec = get_codec("learned", model=str(sliced_codec.loaded.path), device="cpu", effort=1)
    photo = natural_image(64, 96, "RGB", seed=8)
    result = codec.encode(photo, 1.0)
    assert result.achieved_bpp <= 1.0
    assert codec.decode(result.bitstream).shape == photo.shape


def test_a_damaged_channel_order_is_refused(sliced_codec, tmp_path):
    src = sliced_codec.loaded.path
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    tensors[ORDER_KEY] = tensors[ORDER_KEY].clone()
    tensors[ORDER_KEY][0] = tensors[ORDER_KEY][1]
    bad = tmp_path / "bad-order.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(ColdpressError, match="channel order"):
        load_model(str(bad))
    del tensors[ORDER_KEY]
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(ColdpressError, match="missing"):
        load_model(str(bad))
