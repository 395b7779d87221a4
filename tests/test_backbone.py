"""The optional Stable Diffusion backbone of the diffusion decoder (issue 10, item 6), end to end on a tiny
randomly initialised diffusers UNet and VAE built here (as diffusers' own tests do; nothing is downloaded):
`coldpress train --stage diffusion --decoder-backbone`, resume, export, and a refine of a real coarse decode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coldpress.codec.diffusion.backbone import (
    BackboneDecoder, ControlBranch, get_backbone_decoder, is_branch_file, load_backbone, load_branch, target_of, to_x0,
)
from coldpress.errors import ColdpressError
from coldpress.jobs.cli import main
from coldpress.jobs.train_backbone import CHECKPOINT, LOG, STATE
from synthetic_images import natural_image


def tiny_backbone(folder: Path, prediction_type: str = "epsilon") -> Path:
    """A tiny SD-like diffusers folder: UNet2DConditionModel (cross-attention), an 8x AutoencoderKL, a DDPM
    scheduler config with SD's scaled-linear betas."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
    ).save_pretrained(folder / "unet")
    AutoencoderKL(
        block_out_channels=(32, 32, 64, 64), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64,
    ).save_pretrained(folder / "vae")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A backbone, a data folder, and a branch run trained 2 steps then resumed 1 step with an export."""
    root = tmp_path_factory.mktemp("backbone")
    sd = tiny_backbone(root / "sd")
    data = root / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(natural_image(72, 80, "RGB", seed=50 + i)).save(data / f"im{i}.png")
    run = root / "run"
    common = ["train", "--stage", "diffusion", "--decoder-backbone", str(sd), "--run", str(run), "--data", str(data),
              "--batch", "1", "--crop", "64", "--pool", "2", "--refresh", "0", "--threads", "1", "--log-every", "1",
              "--fixed-steps", "1", "--quiet"]
    unet_file = next((sd / "unet").glob("*.safetensors"))
    unet_bytes = unet_file.read_bytes()
    assert main([*common, "--steps", "2"]) == 0
    first = json.loads((run / STATE).read_text())
    first_weights = (run / CHECKPOINT).read_bytes()
    assert main([*common, "--steps", "1", "--model-id", "tiny-branch"]) == 0
    return {"root": root, "sd": sd, "data": data, "run": run, "common": common, "first": first,
            "first_weights": first_weights, "unet_bytes": unet_bytes, "unet_file": unet_file}


def test_training_resumes_and_exports_into_the_run_folder(trained):
    run = trained["run"]
    assert trained["first"]["step"] == 2
    state = json.loads((run / STATE).read_text())
    assert state["step"] == 3 and [h["to_step"] for h in state["history"]] == [2, 3]
    assert state["history"][1]["from_step"] == 2
    assert (run / CHECKPOINT).read_bytes() != trained["first_weights"]  # the resumed step changed the branch
    log = (run / LOG).read_text().splitlines()
    assert log[0].startswith("step,") and [line.split(",")[0] for line in log[1:]] == ["1", "2", "3"]
    assert not (run / "decoder.safetensors").exists()  # the pixel decoder's checkpoint name is left alone
    assert (run / "tiny-branch.md").read_text().startswith("# Model card: tiny-branch")
    # The backbone is frozen: its files are untouched, and the branch did learn (zero convolutions moved).
    assert trained["unet_file"].read_bytes() == trained["unet_bytes"]
    backbone = load_backbone(trained["sd"], "cpu")
    branch, meta, _ = load_branch(run / "tiny-branch.safetensors", backbone)
    assert meta["decoder_id"] == "tiny-branch" and str(trained["sd"]) not in json.dumps(meta)
    zero_convs = [m.weight.detach() for m in branch.controlnet.controlnet_down_blocks]
    assert any(float(w.abs().max()) > 0 for w in zero_convs)
    # The rate reaches the branch (its class embedding) and so the UNet's prediction.
    g = torch.Generator().manual_seed(3)
    z, c = torch.randn(1, 4, 8, 8, generator=g), torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        low, high = branch(backbone.unet, z, 200, c, 0.02), branch(backbone.unet, z, 200, c, 0.5)
    assert not torch.equal(low, high)
    fresh = ControlBranch.fresh(backbone)
    assert all(float(w.abs().max()) == 0 for w in (m.weight.detach() for m in fresh.controlnet.controlnet_down_blocks))


def test_a_diverging_branch_step_is_never_applied(trained, tmp_path):
    """The branch's training shares the pixel decoder's guard (``training_segment.run_segment``): at an
    absurd learning rate the non-finite steps are skipped and counted, and the weights stay finite."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    common = [a if a != str(trained["run"]) else str(run) for a in trained["common"]]
    assert main([*common, "--steps", "4", "--lr", "1e12", "--reset-optimizer"]) == 0
    state = json.loads((run / STATE).read_text())
    assert state["step"] == trained["first"]["step"] + 1 + 4 and state["skipped_steps"] >= 1
    weights = load_file(str(run / CHECKPOINT))
    assert all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point())


def test_a_real_coarse_decode_refines_deterministically_and_detail_zero_is_the_coarse_image(trained):
    from coldpress.codec import get_codec
    from coldpress.codec.diffusion.decoder import bitstream_bpp, seed_of

    img = natural_image(72, 88, "RGB", seed=7)  # not a multiple of the backbone's alignment (16): padded
    codec = get_codec("learned", device="cpu")
    data = codec.encode(img, 0.3).bitstream
    coarse = codec.decode(data)
    dec = BackboneDecoder(trained["run"] / "tiny-branch.safetensors", trained["sd"], "cpu")
    assert get_backbone_decoder(trained["run"] / "tiny-branch.safetensors", trained["sd"], "cpu") is \
        get_backbone_decoder(trained["run"] / "tiny-branch.safetensors", trained["sd"], "cpu")
    assert is_branch_file(trained["run"] / "tiny-branch.safetensors") and not is_branch_file(trained["unet_file"])
    bpp, seed = bitstream_bpp(data, 88, 72), seed_of(data)
    out = dec.refine(coarse, bpp, seed, steps=2)
    assert out.shape == coarse.shape and out.dtype == np.uint8
    assert np.array_equal(out, dec.refine(coarse, bpp, seed, steps=2))
    assert not np.array_equal(out, dec.refine(coarse, bpp, seed + 1, steps=2))  # the noise matters
    assert not np.array_equal(out, coarse)
    assert np.array_equal(dec.refine(coarse, bpp, seed, steps=2, detail=0), coarse)
    assert dec.describe()["steps"] == 1 and dec.describe(2, 0.5)["detail"] == 0.5  # default: the fine-tuned chain
    with pytest.raises(ColdpressError, match="--steps"):
        dec.refine(coarse, bpp, seed, steps=9)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_predictions_convert_to_x0_as_diffusers_does(prediction_type):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type, clip_sample=False)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    t = 120
    a_t = scheduler.alphas_cumprod[t]
    x_t = scheduler.add_noise(x0, eps, torch.tensor([t]))
    target = target_of(x0, x_t, a_t, prediction_type)
    expected = {"epsilon": eps, "v_prediction": scheduler.get_velocity(x0, eps, torch.tensor([t])), "sample": x0}
    torch.testing.assert_close(target, expected[prediction_type], atol=1e-4, rtol=1e-4)
    scheduler.set_timesteps(timesteps=[t, 60])
    ref = scheduler.step(target, t, x_t, generator=torch.Generator().manual_seed(1)).pred_original_sample
    torch.testing.assert_close(to_x0(target, x_t, a_t, prediction_type), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ref, x0, atol=1e-3, rtol=1e-3)


def test_a_branch_refuses_another_backbone_and_folders_without_unet_or_vae(trained, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained["sd"], other)
    config = json.loads((other / "scheduler" / "scheduler_config.json").read_text())
    (other / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "beta_end": 0.02}))
    with pytest.raises(ColdpressError, match="another Stable Diffusion backbone"):
        BackboneDecoder(trained["run"] / "tiny-branch.safetensors", other, "cpu")
    (other / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    vae_file = next((other / "vae").glob("*.safetensors"))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(vae_file))
    key = "decoder.conv_out.weight"
    save_file({**tensors, key: tensors[key] + 0.01}, str(vae_file))
    with pytest.raises(ColdpressError, match="other weights"):
        BackboneDecoder(trained["run"] / "tiny-branch.safetensors", other, "cpu")
    shutil.rmtree(other / "vae")
    with pytest.raises(ColdpressError, match=r"lacks vae/config\.json"):
        load_backbone(other, "cpu")
    run = tmp_path / "run"
    bad_crop = [a if a != "64" else "56" for a in trained["common"]]
    bad_crop[bad_crop.index("--run") + 1] = str(run)
    assert main([*bad_crop, "--steps", "1"]) == 1  # 56 is not a multiple of 16
    assert not (run / CHECKPOINT).exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_noise_is_drawn_on_cpu_and_the_refine_is_close_to_the_cpu_one(trained, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 on the GPU, as the CPU
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    img = natural_image(64, 64, "RGB", seed=8)
    cpu = BackboneDecoder(trained["run"] / "tiny-branch.safetensors", trained["sd"], "cpu")
    gpu = BackboneDecoder(trained["run"] / "tiny-branch.safetensors", trained["sd"], "cuda")
    a, b = cpu.refine(img, 0.05, 11, 2), gpu.refine(img, 0.05, 11, 2)
    assert np.array_equal(b, gpu.refine(img, 0.05, 11, 2))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_an_archive_restores_through_the_backbone_branch_from_the_cli(trained, tmp_path, capsys):
    from coldpress.transforms.records import restored_provenance

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(natural_image(64, 96, "RGB", seed=70)).save(src / "photo.png")
    assert main(["encode", str(src), str(tmp_path / "archive"), "--bpp", "0.3", "--quiet"]) == 0
    branch = trained["run"] / "tiny-branch.safetensors"
    restore = ["restore", str(tmp_path / "archive"), "--all", "--decoder", "diffusion", "--steps", "2",
               "--decoder-model", str(branch), "--decoder-backbone", str(trained["sd"]), "--quiet"]
    assert main([restore[0], restore[1], str(tmp_path / "a"), *restore[2:]]) == 0
    assert main([restore[0], restore[1], str(tmp_path / "b"), *restore[2:]]) == 0
    a, b = (tmp_path / "a" / "photo.png").read_bytes(), (tmp_path / "b" / "photo.png").read_bytes()
    assert a == b
    provenance = restored_provenance(a)
    assert provenance["decoder"] == "diffusion" and provenance["steps"] == 2 and "backbone_fingerprint" in provenance
    assert main(["restore", str(tmp_path / "archive"), str(tmp_path / "c"), "--all", "--decoder", "diffusion",
                 "--decoder-backbone", str(trained["sd"])]) == 1
    assert "needs the control branch" in capsys.readouterr().err
