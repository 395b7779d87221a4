"""The diffusion decoder (issue 10): relay residual sampling, determinism, the detail knob, restore through
the CLI in separate processes, decoder weights, and `coldpress train --stage diffusion`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coldpress.codec.diffusion import DecoderChoice
from coldpress.codec.diffusion.decoder import DiffusionDecoder, seed_of
from coldpress.codec.diffusion.denoiser import DenoiserConfig, RelayDenoiser
from coldpress.codec.diffusion.relay import make_scheduler, relay_start, relay_state, relay_timesteps
from coldpress.codec.diffusion.weights import save_decoder
from coldpress.errors import ColdpressError
from coldpress.jobs.cli import main
from coldpress.transforms.archive import open_archive
from synthetic_images import natural_image, torch_threads

REPO = Path(__file__).resolve().parents[1]
V2 = "cp-extreme-s16-v2"


def _v2_available() -> bool:
    from coldpress.codec.models import registry

    return V2 in registry()["models"]


def decoder_file(folder: Path, name: str = "test-decoder", seed: int = 0, scale: float = 0.05) -> Path:
    """A small decoder whose output layer is not zero (a fresh one returns the coarse image exactly)."""
    torch.manual_seed(seed)
    net = RelayDenoiser(DenoiserConfig(block_out_channels=(16, 32), norm_num_groups=8))
    with torch.no_grad():
        net.unet.conv_out.weight.normal_(0, scale)
        net.unet.conv_out.bias.normal_(0, scale)
    path = folder / f"{name}.safetensors"
    save_decoder(net, path, name)
    return path


def test_the_relay_state_at_the_start_timestep_is_the_coarse_image_plus_noise():
    cfg = DenoiserConfig()
    sched = make_scheduler(cfg)
    g = torch.Generator().manual_seed(1)
    x0, c, eps = (torch.rand(2, 3, 8, 8, generator=g) * 2 - 1 for _ in range(3))
    t = torch.full((2,), cfg.start_timestep)
    assert torch.allclose(relay_state(sched, cfg, x0, c, eps, t), relay_start(sched, cfg, c, eps), atol=1e-5)
    # Near t = 0 the state is the original: the residual shrinks with the noise.
    near = relay_state(sched, cfg, x0, c, eps, torch.zeros(2, dtype=torch.long))
    assert (near - x0).abs().max() < 0.05
    assert relay_timesteps(cfg, 2) == [250, 125] and relay_timesteps(cfg, 1) == [250]
    with pytest.raises(ColdpressError, match="between 1 and 5"):
        relay_timesteps(cfg, 6)


def test_a_fresh_decoder_and_detail_zero_give_the_coarse_image(tmp_path):
    torch.manual_seed(0)
    fresh = RelayDenoiser(DenoiserConfig(block_out_channels=(16, 32), norm_num_groups=8))
    save_decoder(fresh, tmp_path / "fresh.safetensors", "fresh")
    coarse = natural_image(40, 56, "RGB", seed=2)
    assert np.array_equal(DiffusionDecoder(str(tmp_path / "fresh.safetensors"), "cpu").refine(coarse, 0.05, 7, 2), coarse)
    trained = DiffusionDecoder(str(decoder_file(tmp_path)), "cpu")
    assert np.array_equal(trained.refine(coarse, 0.05, 7, 2, detail=0.0), coarse)
    refined = trained.refine(coarse, 0.05, 7, 2)
    assert refined.shape == coarse.shape and refined.dtype == np.uint8 and not np.array_equal(refined, coarse)


def test_refinement_is_deterministic_and_follows_seed_detail_steps_and_rate(tmp_path):
    dec = DiffusionDecoder(str(decoder_file(tmp_path)), "cpu")
    coarse = natural_image(48, 64, "RGB", seed=3)
    a = dec.refine(coarse, 0.03, 11, 2)
    assert np.array_equal(a, dec.refine(coarse, 0.03, 11, 2))
    for other in (dec.refine(coarse, 0.03, 12, 2), dec.refine(coarse, 0.03, 11, 3),
                  dec.refine(coarse, 0.03, 11, 2, 1.5), dec.refine(coarse, 0.1, 11, 2)):
        assert not np.array_equal(a, other)
    # Detail scales the change: smoother below 1, stronger above.
    change = {s: np.abs(dec.refine(coarse, 0.03, 11, 2, s).astype(int) - coarse).mean() for s in (0.5, 1.0, 2.0)}
    assert change[0.5] < change[1.0] < change[2.0]
    for bad in ({"steps": 0}, {"steps": 6}, {"detail": -0.1}, {"detail": float("nan")}):
        with pytest.raises(ColdpressError, match="--steps|--detail"):
            dec.refine(coarse, 0.03, 11, bad.get("steps", 2), bad.get("detail", 1.0))


def test_large_images_refine_tile_by_tile_with_the_shape_kept(tmp_path, monkeypatch):
    from coldpress.codec.diffusion import decoder as decoder_module

    dec = DiffusionDecoder(str(decoder_file(tmp_path)), "cpu")
    coarse = natural_image(40, 150, "RGB", seed=4)
    whole = dec.refine(coarse, 0.05, 3, 1)
    monkeypatch.setattr(decoder_module, "TILE", 64)
    differences = {}
    for halo in (0, 32):
        monkeypatch.setattr(decoder_module, "HALO", halo)
        tiled = dec.refine(coarse, 0.05, 3, 1)
        assert tiled.shape == whole.shape and tiled.dtype == np.uint8
        differences[halo] = np.abs(tiled.astype(int) - whole).mean()
    # GroupNorm statistics are per tile, so tiles differ from the whole image; the halo narrows the gap.
    assert differences[32] < differences[0]


def test_decoder_choices_are_checked_with_messages_that_say_what_to_do(tmp_path):
    with pytest.raises(ColdpressError, match="add --decoder diffusion"):
        DecoderChoice(decoder="coarse", steps=2)
    with pytest.raises(ColdpressError, match="unknown decoder"):
        DecoderChoice(decoder="gan")
    with pytest.raises(ColdpressError, match="--steps must be"):
        DecoderChoice(decoder="diffusion", steps=9)
    with pytest.raises(ColdpressError, match="unknown diffusion decoder 'nope'"):
        DiffusionDecoder("nope", "cpu")
    not_a_decoder = tmp_path / "codec.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(not_a_decoder), metadata={"config": "{}"})
    with pytest.raises(ColdpressError, match="not a coldpress diffusion decoder"):
        DiffusionDecoder(str(not_a_decoder), "cpu")


@pytest.fixture(scope="module")
def v2_archive(tmp_path_factory):
    if not _v2_available():
        pytest.skip(f"{V2} is not shipped in this installation")
    root = tmp_path_factory.mktemp("v2")
    src = root / "src"
    src.mkdir()
    Image.fromarray(natural_image(96, 128, "RGB", seed=21)).save(src / "photo.png")
    alpha = np.full((96, 128, 1), 255, np.uint8)
    alpha[:16, :16] = 0  # a transparent corner: an alpha plane that costs few bytes
    Image.fromarray(np.concatenate([natural_image(96, 128, "RGB", seed=22), alpha], axis=2)).save(src / "alpha.png")
    assert main(["encode", str(src), str(root / "archive"), "--bpp", "0.5", "--model", V2, "--quiet"]) == 0
    assert len(open_archive(str(root / "archive")).read(columns=["id"])) == 2
    return root


def _restore_in_process(archive: Path, dst: Path, decoder: Path, threads: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    code = ("import sys, torch; torch.set_num_threads(int(sys.argv[1])); from coldpress.jobs.cli import main; "
            "sys.exit(main(sys.argv[2:]))")
    return subprocess.run(
        [sys.executable, "-c", code, str(threads), "restore", str(archive), str(dst), "--all", "--decoder", "diffusion",
         "--steps", "2", "--decoder-model", str(decoder), "--quiet"],
        env=env, capture_output=True, text=True, timeout=600,
    )


def test_an_archive_of_the_current_release_restores_identically_in_two_processes_and_thread_counts(v2_archive, tmp_path):
    from coldpress.transforms.records import restored_provenance

    dec = decoder_file(tmp_path)
    outs = []
    with torch_threads(2):  # here on 2 threads, in a child process on 1
        assert main(["restore", str(v2_archive / "archive"), str(tmp_path / "out2"), "--all", "--decoder", "diffusion",
                     "--steps", "2", "--decoder-model", str(dec), "--quiet"]) == 0
    outs.append({p.name: p.read_bytes() for p in sorted((tmp_path / "out2").iterdir())})
    proc = _restore_in_process(v2_archive / "archive", tmp_path / "out1", dec, 1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outs.append({p.name: p.read_bytes() for p in sorted((tmp_path / "out1").iterdir())})
    assert outs[0] == outs[1] and set(outs[0]) == {"photo.png", "alpha.png"}
    assert main(["restore", str(v2_archive / "archive"), str(tmp_path / "coarse"), "--all", "--quiet"]) == 0
    for name, data in outs[0].items():
        coarse = (tmp_path / "coarse" / name).read_bytes()
        refined_px, coarse_px = (np.asarray(Image.open(io.BytesIO(d))) for d in (data, coarse))
        assert refined_px.shape == coarse_px.shape and not np.array_equal(refined_px, coarse_px)
        if refined_px.shape[-1] == 4:  # the alpha plane is the codec's, untouched
            assert np.array_equal(refined_px[..., 3], coarse_px[..., 3])
        provenance = restored_provenance(data)
        assert provenance["decoder"] == "diffusion" and provenance["steps"] == 2 and provenance["detail"] == 1.0
        assert provenance["decoder_id"] == "test-decoder" and len(provenance["decoder_sha256"]) == 64
        assert restored_provenance(coarse) is None


def test_restore_records_the_decoder_in_tiff_and_refuses_decoder_options_without_diffusion(v2_archive, tmp_path, capsys):
    from coldpress.transforms.records import restored_provenance

    dec = decoder_file(tmp_path)
    assert main(["restore", str(v2_archive / "archive"), str(tmp_path / "t"), "--id", "photo.png", "--format", "tiff",
                 "--decoder", "diffusion", "--steps", "1", "--detail", "0.5", "--decoder-model", str(dec),
                 "--quiet"]) == 0
    tif = next((tmp_path / "t").iterdir())
    assert restored_provenance(tif.read_bytes())["steps"] == 1
    assert restored_provenance(tif.read_bytes())["detail"] == 0.5
    assert main(["restore", str(v2_archive / "archive"), str(tmp_path / "x"), "--all", "--steps", "2"]) == 1
    assert "add --decoder diffusion" in capsys.readouterr().err
    assert main(["restore", str(v2_archive / "archive"), str(tmp_path / "x"), "--all", "--decoder", "diffusion",
                 "--decoder-model", str(dec), "--steps", "7"]) == 1
    assert "--steps must be" in capsys.readouterr().err


def test_the_python_api_decodes_through_the_diffusion_decoder(v2_archive, tmp_path):
    from coldpress.codec import decode_bitstream
    from coldpress.pipelines.local import restore_local
    from coldpress.transforms.archive import open_archive

    dec = decoder_file(tmp_path)
    row = next(r for r in open_archive(str(v2_archive / "archive")).read().to_pylist() if r["id"] == "photo.png")
    choice = {"decoder": "diffusion", "steps": 2, "model": str(dec)}
    px = decode_bitstream(row["bitstream"], decoder=choice)
    assert np.array_equal(px, decode_bitstream(row["bitstream"], decoder=DecoderChoice(**choice)))
    assert not np.array_equal(px, decode_bitstream(row["bitstream"]))
    paths = restore_local(str(v2_archive / "archive"), str(tmp_path / "api"), ids=["photo.png"], progress=False,
                          decoder=choice)
    assert np.array_equal(np.asarray(Image.open(paths[0])), px)
    assert seed_of(row["bitstream"]) == seed_of(bytes(row["bitstream"]))


def _tiny_diffusion_run(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """(data folder of 3 small images, run folder, the CLI arguments of a tiny diffusion training on them)."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(natural_image(80, 96, "RGB", seed=40 + i)).save(data / f"im{i}.png")
    run = tmp_path / "run"
    common = ["train", "--stage", "diffusion", "--run", str(run), "--data", str(data), "--batch", "2", "--crop", "64",
              "--pool", "3", "--refresh", "1", "--threads", "1", "--quiet"]
    return data, run, common


def test_train_stage_diffusion_runs_resumes_and_exports_a_decoder_that_restores(tmp_path, v2_archive):
    data, run, common = _tiny_diffusion_run(tmp_path)
    common += ["--log-every", "1"]
    assert main([*common, "--steps", "2"]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 2 and (run / "decoder.safetensors").exists() and (run / "optimizer.pt").exists()
    out = tmp_path / "export"
    assert main([*common, "--steps", "1", "--model-id", "tiny-decoder", "--export-to", str(out)]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 3 and [h["to_step"] for h in state["history"]] == [2, 3]
    assert (out / "tiny-decoder.md").read_text().startswith("# Model card: tiny-decoder")
    log = (run / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and len(log) == 4
    dec = DiffusionDecoder(str(out / "tiny-decoder.safetensors"), "cpu")
    assert dec.decoder_id == "tiny-decoder"
    assert main(["restore", str(v2_archive / "archive"), str(tmp_path / "r"), "--id", "photo.png", "--decoder",
                 "diffusion", "--decoder-model", str(out / "tiny-decoder.safetensors"), "--quiet"]) == 0
    # A codec run folder is not a decoder run folder.
    (tmp_path / "codec-run").mkdir()
    (tmp_path / "codec-run" / "checkpoint.safetensors").write_bytes(b"x")
    assert main(["train", "--stage", "diffusion", "--run", str(tmp_path / "codec-run"), "--data", str(data),
                 "--steps", "1", "--crop", "64"]) == 1


def test_diffusion_training_never_applies_a_diverging_step_and_stops_with_what_to_do(tmp_path, monkeypatch, capsys):
    """An absurd learning rate makes every step after the first non-finite (measured: 5 of 6): none is
    applied, the checkpoint keeps finite weights, and a run that keeps diverging stops with what to do."""
    from safetensors.torch import load_file

    from coldpress.jobs import finite_steps

    _, run, common = _tiny_diffusion_run(tmp_path)
    common += ["--lr", "1e8"]
    assert main([*common, "--steps", "6"]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 6 and state["skipped_steps"] >= 1
    weights = load_file(str(run / "decoder.safetensors"))
    assert all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point())
    monkeypatch.setattr(finite_steps, "MAX_SKIPPED_IN_A_ROW", 2)
    capsys.readouterr()
    assert main([*common, "--steps", "20"]) == 1
    err = capsys.readouterr().err
    assert "training diverged: 2 steps in a row" in err and "lower --lr" in err
    after = load_file(str(run / "decoder.safetensors"))
    assert all(torch.equal(weights[k], after[k]) for k in weights)


def test_ray_beam_and_the_warm_service_restore_through_the_diffusion_decoder_like_the_local_engine(v2_archive, tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("apache_beam")
    from coldpress.pipelines.beam import restore_beam
    from coldpress.pipelines.local import restore_local
    from coldpress.pipelines.ray import RestoreService, connect, restore_ray

    archive = str(v2_archive / "archive")
    choice = {"decoder": "diffusion", "steps": 1, "detail": 1.5, "model": str(decoder_file(tmp_path))}
    restore_local(archive, str(tmp_path / "local"), progress=False, decoder=choice)
    expected = {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir()}
    restore_beam(archive, str(tmp_path / "beam"), progress=False, decoder=choice,
                 pipeline_args=["--direct_num_workers=1"])
    started_here = not ray.is_initialized()
    connect(num_cpus=2, object_store_memory=256 << 20, quiet=True)
    try:
        restore_ray(archive, str(tmp_path / "ray"), progress=False, decoder=choice, num_actors=1)
        with RestoreService.start(archive, num_decoders=1, cpus_per_decoder=1) as service:
            service.restore(["photo.png"], str(tmp_path / "service"), decoder=choice)
            pixels = service.restore_pixels(["photo.png"], decoder=choice)["photo.png"]
    finally:
        if started_here:
            ray.shutdown()
    for engine in ("beam", "ray"):
        assert {p.name: p.read_bytes() for p in (tmp_path / engine).iterdir()} == expected, engine
    assert (tmp_path / "service" / "photo.png").read_bytes() == expected["photo.png"]
    assert np.array_equal(pixels, np.asarray(Image.open(io.BytesIO(expected["photo.png"]))))


def test_bench_rd_scores_the_decoders_with_realism_measures_and_draws_the_crops(tmp_path):
    import csv

    from coldpress.codec.models import default_model_available

    if not default_model_available():
        pytest.skip("no learned model bundled")
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(natural_image(200, 208, "RGB", seed=60 + i)).save(folder / f"im{i}.png")
    dec = decoder_file(tmp_path)
    out = tmp_path / "rd"
    assert main(["bench", "rd", str(folder), "--codecs", "learned", "avif-half", "--bpp", "0.03", "0.1",
                 "--decoders", "coarse", "diffusion:1:1", "diffusion:2:1", "--decoder-model", str(dec),
                 "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    codecs = {r["codec"] for r in rows}
    assert codecs == {"learned", "learned+diffusion-s1-d1", "learned+diffusion-s2-d1", "avif-half"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["niqe"] and r["swd_x1e3"] and r["hf_energy_ratio"] for r in ok)
    by = {(r["codec"], r["image"], r["target_bpp"]): r for r in ok}
    for (codec, image, target), r in by.items():
        if codec.startswith("learned+"):  # the same bitstream as the coarse row, decoded otherwise
            coarse = by[("learned", image, target)]
            assert r["achieved_bpp"] == coarse["achieved_bpp"] and r["psnr"] != coarse["psnr"]
            assert float(r["decode_s"]) > float(coarse["decode_s"])
    report = json.loads((out / "summary.json").read_text())
    assert report["diffusion_decoder"]["decoder_id"] == "test-decoder" and report["realism"]["niqe_originals"] > 0
    columns = report["crops"]["columns"]  # avif-half only where it reached 0.03 bpp on every crop image
    assert report["crops"]["written"] and columns[0] == "original" and columns[-2:] == ["coarse", "diffusion s2-d1"]
    assert Image.open(out / "crops.png").size[0] > 4 * 160
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert all(s["mean_niqe"] for s in summary if s["complete"] == "True")
    # Without a diffusion decoder the diffusion rows are skipped with the reason, the coarse ones kept.
    assert main(["bench", "rd", str(folder), "--codecs", "learned", "--bpp", "0.1", "--limit", "1", "--no-realism",
                 "--decoders", "coarse", "diffusion:2:1", "--decoder-model", str(tmp_path / "absent.safetensors"),
                 "--crops", "0", "--out", str(tmp_path / "rd2"), "--quiet"]) == 0
    report = json.loads((tmp_path / "rd2" / "summary.json").read_text())
    assert "unknown diffusion decoder" in report["skipped_decoders"]["diffusion:2:1"]
    assert {r["codec"] for r in csv.DictReader(open(tmp_path / "rd2" / "per_image.csv"))} == {"learned"}


def test_bench_speed_times_the_diffusion_decoder_per_step_count(tmp_path):
    from coldpress.codec.models import default_model_available

    if not default_model_available():
        pytest.skip("no learned model bundled")
    out = tmp_path / "speed"
    assert main(["bench", "speed", "--codec", "learned", "--device", "cpu", "--width", "96", "--height", "64",
                 "--batch", "1", "--repeat", "1", "--warmup", "0", "--bpp", "0.3", "--decoder-steps", "1", "2",
                 "--decoder-model", str(decoder_file(tmp_path)), "--out", str(out), "--quiet"]) == 0
    rows = {r["stage"]: r for r in json.loads((out / "speed.json").read_text())["rows"]}
    for steps in (1, 2):
        row = rows[f"decode-diffusion-s{steps}"]
        # Times are the benchmark's to report, not this test's to judge (one unwarmed run of a 96x64 image
        # is noise: the first coarse decode has taken twice a diffusion decode here under load).
        assert row["status"] == "ok" and row["median_s"] > 0
        assert "x the coarse decode" in row["note"] and "float64 UNet" in row["note"]
