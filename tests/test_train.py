"""`coldpress train`: a few real training steps on generated images, checkpoint and resume, export to
safetensors with a model card, strict loading of the export, and coding with the exported model; a
lighter synthesis cut out of a run and trained alone."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from coldpress.codec import get_codec
from coldpress.codec.models import file_sha256, load_model
from coldpress.errors import ColdpressError, ModelMismatchError
from coldpress.jobs.train import main as train_main
from synthetic_images import natural_image

STEPS = ["--batch", "2", "--crop", "64", "--threads", "1", "--log-every", "1", "--checkpoint-minutes", "0"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train-images")
    for i in range(4):
        Image.fromarray(natural_image(80, 96, "RGB", seed=i)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image: skipped")
    return folder


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, image_folder) -> Path:
    run = tmp_path_factory.mktemp("run")
    assert train_main(["--run", str(run), "--data", str(image_folder), "--steps", "2", *STEPS]) == 0
    return run


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run folder, so that a test can train on without touching the shared one."""
    shutil.copytree(src, dst)
    return dst


def test_training_writes_checkpoint_state_and_log(trained_run, image_folder):
    state = json.loads((trained_run / "state.json").read_text())
    assert state["step"] == 2
    assert state["images"] == 4
    assert state["data"] == [str(image_folder)]
    assert (trained_run / "checkpoint.safetensors").exists()
    rows = list(csv.DictReader((trained_run / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(float(r["bpp"]) > 0 and np.isfinite(float(r["loss"])) for r in rows)


def test_training_resumes_where_it_stopped(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "resumed")
    before = load_file(str(run / "checkpoint.safetensors"))
    assert train_main(["--run", str(run), "--steps", "1", *STEPS]) == 0  # data folders come from the run
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 3
    after = load_file(str(run / "checkpoint.safetensors"))
    assert before.keys() == after.keys()
    assert any(not np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)  # it trained on
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]


def test_export_gives_weights_card_and_a_working_codec(trained_run, tmp_path):
    out = tmp_path / "weights"
    assert train_main(["--run", str(trained_run), "--steps", "0", "--model-id", "tiny-test-v0",
                       "--export-to", str(out)]) == 0
    weights = out / "tiny-test-v0.safetensors"
    card = (out / "tiny-test-v0.md").read_text()
    assert file_sha256(weights) in card
    assert "2 steps" in card and "parameters" in card
    loaded = load_model(str(weights))
    assert loaded.model_id == "tiny-test-v0"

    codec = get_codec("learned", model=str(weights), device="cpu")
    img = natural_image(64, 96, "RGB", seed=9)
    data = codec.encode(img, 1.0).bitstream
    assert codec.decode(data).shape == img.shape
    with pytest.raises(ModelMismatchError, match="tiny-test-v0"):
        get_codec("learned", device="cpu").decode(data)  # the shipped model refuses another model's bitstream


def test_loading_is_strict_about_keys(trained_run, tmp_path):
    out = tmp_path / "weights"
    train_main(["--run", str(trained_run), "--steps", "0", "--model-id", "tiny-test-v1", "--export-to", str(out)])
    from safetensors import safe_open

    src = out / "tiny-test-v1.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    dropped = sorted(k for k in tensors if k.startswith("g_s."))[0]
    del tensors[dropped]
    bad = tmp_path / "missing-key.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(ColdpressError, match="missing"):
        load_model(str(bad))


def test_a_checkerboard_context_is_added_to_a_run_and_trained_alone(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "ctx")
    before = load_file(str(run / "checkpoint.safetensors"))
    assert train_main(["--run", str(run), "--steps", "2", "--lr", "1e-2", "--context", "checkerboard",
                       "--train-only", "context", *STEPS]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["config"]["context"] == "checkerboard" and state["train_only"] == "context"
    after = load_file(str(run / "checkpoint.safetensors"))
    new = set(after) - set(before)
    assert new and all(k.startswith("context.") for k in new)
    for k in before:  # everything but the context is frozen
        assert np.array_equal(before[k].numpy(), after[k].numpy()), k
    assert after["context.params.4.weight"].abs().sum() > 0  # the zero-initialised last layer learned

    out = tmp_path / "weights"
    assert train_main(["--run", str(run), "--steps", "0", "--model-id", "tiny-ctx-v0", "--export-to", str(out)]) == 0
    assert "checkerboard" in (out / "tiny-ctx-v0.md").read_text()
    codec = get_codec("learned", model=str(out / "tiny-ctx-v0.safetensors"), device="cpu")
    assert codec.loaded.has_context
    img = natural_image(96, 128, "RGB", seed=4)
    for bpp in (0.5, 2.0):
        result = codec.encode(img, bpp)
        assert result.achieved_bpp <= bpp
        assert codec.decode(result.bitstream).shape == img.shape


def test_training_only_the_context_needs_a_context(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "noctx")
    with pytest.raises(SystemExit, match="--context checkerboard"):
        train_main(["--run", str(run), "--steps", "1", "--train-only", "context", *STEPS])


def test_a_checkpoint_is_evaluated_without_training(trained_run, image_folder, tmp_path):
    run = copy_run(trained_run, tmp_path / "eval")
    before = (run / "checkpoint.safetensors").read_bytes()
    assert train_main(["--run", str(run), "--steps", "0", "--eval", str(image_folder), "--threads", "1"]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 2 and state["eval"]["step"] == 2
    points = json.loads((run / "eval.json").read_text())["points"]
    assert [p["q"] for p in points] == [i * 0.5 for i in range(11)]
    assert all(p["bpp"] > 0 and 0 < p["psnr"] < 100 for p in points)
    assert points[-1]["bpp"] > points[0]["bpp"]
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_a_diverging_step_is_never_applied_and_a_diverged_run_keeps_its_last_checkpoint(trained_run, tmp_path,
                                                                                        monkeypatch):
    """An absurd learning rate makes the loss NaN from the second step on (measured: without the guard every
    weight of the checkpoint became NaN). No such step is applied, and a run that keeps diverging stops
    with what to do, its last good checkpoint kept."""
    import torch

    from coldpress.jobs import finite_steps

    run = copy_run(trained_run, tmp_path / "diverging")
    assert train_main(["--run", str(run), "--steps", "4", *STEPS, "--lr", "1e4"]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 6 and state["skipped_steps"] >= 1
    assert all(bool(torch.isfinite(v).all()) for v in load_file(str(run / "checkpoint.safetensors")).values()
               if v.is_floating_point())
    monkeypatch.setattr(finite_steps, "MAX_SKIPPED_IN_A_ROW", 2)
    before = load_file(str(run / "checkpoint.safetensors"))
    with pytest.raises(ColdpressError, match=r"training diverged: 2 steps in a row .* lower --lr"):
        train_main(["--run", str(run), "--steps", "20", *STEPS, "--lr", "1e4"])
    after = load_file(str(run / "checkpoint.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # the weights of the last good step


def test_a_cut_synthesis_trains_alone_and_exports(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "lite")
    before = load_file(str(run / "checkpoint.safetensors"))
    cut = "16,16,16,12,8"
    assert train_main(["--run", str(run), "--steps", "2", "--lr", "1e-3", "--train-only", "synthesis",
                       "--dec-channels", cut, *STEPS]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["config"]["dec_channels"] == [16, 16, 16, 12, 8] and state["train_only"] == "synthesis"
    assert "cut from" in state["history"][-1]["note"]
    after = load_file(str(run / "checkpoint.safetensors"))
    assert set(after) == set(before)
    for k in before:
        if k.startswith("g_s."):
            continue
        assert np.array_equal(before[k].numpy(), after[k].numpy()), k  # the encoder and entropy models froze
    assert after["g_s.tail.weight"].shape[1] == 8 < before["g_s.tail.weight"].shape[1]

    # Resuming keeps the cut network (no second cut) and goes on training it.
    assert train_main(["--run", str(run), "--steps", "1", "--lr", "1e-3", "--train-only", "synthesis",
                       "--dec-channels", cut, *STEPS]) == 0
    resumed = load_file(str(run / "checkpoint.safetensors"))
    assert resumed["g_s.tail.weight"].shape == after["g_s.tail.weight"].shape
    assert not np.array_equal(resumed["g_s.tail.weight"].numpy(), after["g_s.tail.weight"].numpy())

    out = tmp_path / "weights"
    assert train_main(["--run", str(run), "--steps", "0", "--model-id", "tiny-lite-v0", "--export-to", str(out)]) == 0
    codec = get_codec("learned", model=str(out / "tiny-lite-v0.safetensors"), device="cpu")
    img = natural_image(96, 128, "RGB", seed=5)
    result = codec.encode(img, 1.0)
    assert result.achieved_bpp <= 1.0
    assert codec.decode(result.bitstream).shape == img.shape


def test_a_cut_needs_the_synthesis_alone_one_count_per_stage_and_a_checkpoint(trained_run, image_folder, tmp_path):
    run = copy_run(trained_run, tmp_path / "bad")
    with pytest.raises(SystemExit, match="--train-only synthesis"):
        train_main(["--run", str(run), "--steps", "1", "--dec-channels", "16,16,16,12,8", *STEPS])
    with pytest.raises(SystemExit, match="one per synthesis stage"):
        train_main(["--run", str(run), "--steps", "1", "--train-only", "synthesis", "--dec-channels", "16,8", *STEPS])
    with pytest.raises(SystemExit, match="holds no checkpoint"):
        train_main(["--run", str(tmp_path / "empty"), "--data", str(image_folder), "--steps", "1",
                    "--train-only", "synthesis", "--dec-channels", "16,16,16,12,8", *STEPS])


def test_an_export_is_shipped_beside_the_default_or_registered_as_it(trained_run, tmp_path, monkeypatch):
    from coldpress.codec import models

    reg_file = tmp_path / "MODELS.json"
    reg_file.write_text(models.REGISTRY_FILE.read_text())
    monkeypatch.setattr(models, "REGISTRY_FILE", reg_file)
    default = json.loads(reg_file.read_text())["default"]
    out = tmp_path / "weights"
    assert train_main(["--run", str(trained_run), "--steps", "0", "--model-id", "tiny-opt-v0", "--export-to", str(out),
                       "--ship"]) == 0
    reg = json.loads(reg_file.read_text())
    assert reg["default"] == default
    assert reg["models"]["tiny-opt-v0"]["sha256"] == file_sha256(out / "tiny-opt-v0.safetensors")
    assert train_main(["--run", str(trained_run), "--steps", "0", "--model-id", "tiny-def-v0", "--export-to", str(out),
                       "--register"]) == 0
    reg = json.loads(reg_file.read_text())
    assert reg["default"] == "tiny-def-v0" and "tiny-opt-v0" in reg["models"]
