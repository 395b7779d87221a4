"""`coldpress bench rd` and `coldpress bench speed`, run in-process through the real CLI on tiny images."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from coldpress import metrics
from coldpress.codec.models import default_model_available
from coldpress.jobs import cli
from synthetic_images import natural_image

# Targets for 96x64 images: 0.05 bpp (38 bytes) is below any codec's headers; at 0.4 bpp JPEG fits the
# grey gradient (coded as one channel: ~0.31 bpp at its lowest quality) but not the colourful detailed
# image (~0.51 bpp); 1, 2 and 4 bpp fit both images with both codecs.
TARGETS = [0.05, 0.4, 1.0, 2.0, 4.0]


def _grey_gradient(height: int = 64, width: int = 96) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    grey = np.clip(np.round(60 + 1.2 * x + 0.8 * y + 10 * np.sin(x / 7)), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)  # RGB with equal channels


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    Image.fromarray(_grey_gradient()).save(root / "a_gradient.png")
    Image.fromarray(natural_image(64, 96, seed=1)).save(root / "b_detail.png")
    (root / "notes.txt").write_text("not an image: ignored by suffix")
    return root


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(value: str) -> float | None:
    return None if value == "" else float(value)


@pytest.fixture(scope="module")
def rd_run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("rd")
    argv = ["bench", "rd", str(folder), "--codecs", "avif-half", "jpeg", "--bpp", *map(str, TARGETS),
            "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    return out


def test_rd_writes_every_output(rd_run):
    for name in ("per_image.csv", "summary.csv", "summary.json", "bd.csv", "rd.png"):
        assert (rd_run / name).stat().st_size > 0, name
    with Image.open(rd_run / "rd.png") as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 200


def test_rd_per_image_rows_are_sane(rd_run, folder):
    rows = _csv(rd_run / "per_image.csv")
    assert len(rows) == 2 * 2 * len(TARGETS)  # images x codecs x targets; notes.txt is not an image
    assert {r["image"] for r in rows} == {"a_gradient.png", "b_detail.png"}
    sources = {name: np.asarray(Image.open(folder / name).convert("RGB")) for name in ("a_gradient.png", "b_detail.png")}
    for r in rows:
        target = float(r["target_bpp"])
        if r["status"] == "ok":
            achieved = float(r["achieved_bpp"])
            assert 0 < achieved <= target
            assert 15 < float(r["psnr"]) <= metrics.PSNR_CAP_DB
            assert 0 < float(r["ms_ssim"]) <= 1
            assert float(r["encode_s"]) > 0 and float(r["decode_s"]) > 0
            assert float(r["encode_mp_s"]) == pytest.approx(96 * 64 / 1e6 / float(r["encode_s"]))
            assert "q" in json.loads(r["params"])
        else:
            assert r["status"] == "unreachable", r
            assert r["achieved_bpp"] == r["psnr"] == ""
            assert "cannot" in r["message"]
            if r["needed_bpp"]:
                assert float(r["needed_bpp"]) > target
    by_key = {(r["image"], r["codec"], float(r["target_bpp"])): r for r in rows}
    # Below every codec's headers: unreachable everywhere, never a crash.
    assert all(by_key[(i, c, 0.05)]["status"] == "unreachable" for i in sources for c in ("avif-half", "jpeg"))
    # JPEG at 0.4 bpp: the gradient fits, the detailed image does not, and its needed rate is said.
    assert by_key[("a_gradient.png", "jpeg", 0.4)]["status"] == "ok"
    detail = by_key[("b_detail.png", "jpeg", 0.4)]
    assert detail["status"] == "unreachable" and float(detail["needed_bpp"]) > 0.4
    # Generous targets are reached by every codec on every image.
    assert all(by_key[(i, c, t)]["status"] == "ok" for i in sources for c in ("avif-half", "jpeg") for t in (1.0, 2.0, 4.0))
    # The recorded PSNR is the PSNR of a real round trip: re-encoding gives the same bytes and score.
    from coldpress.codec import get_codec

    codec = get_codec("jpeg")
    again = codec.encode(sources["b_detail.png"], 2.0)
    assert again.achieved_bpp == pytest.approx(float(by_key[("b_detail.png", "jpeg", 2.0)]["achieved_bpp"]))
    assert metrics.psnr(sources["b_detail.png"], codec.decode(again.bitstream)) == pytest.approx(
        float(by_key[("b_detail.png", "jpeg", 2.0)]["psnr"]))


def test_rd_summary_counts_and_means(rd_run):
    rows = _csv(rd_run / "per_image.csv")
    summary = _csv(rd_run / "summary.csv")
    report = json.loads((rd_run / "summary.json").read_text())
    assert len(summary) == len(report["summary"]) == 2 * len(TARGETS)
    assert report["targets_bpp"] == TARGETS
    assert report["images"] == ["a_gradient.png", "b_detail.png"]
    assert set(report["codecs"]) == {"avif-half", "jpeg"} and report["skipped_codecs"] == {}
    for s in summary:
        group = [r for r in rows if r["codec"] == s["codec"] and float(r["target_bpp"]) == float(s["target_bpp"])]
        ok = [r for r in group if r["status"] == "ok"]
        assert int(s["images"]) == 2
        assert int(s["reached"]) == len(ok)
        assert int(s["unreachable"]) == sum(r["status"] == "unreachable" for r in group)
        assert (s["complete"] == "True") == (len(ok) == 2)
        if ok:  # means over the reached images only
            assert float(s["mean_psnr"]) == pytest.approx(np.mean([float(r["psnr"]) for r in ok]))
            assert float(s["mean_achieved_bpp"]) == pytest.approx(np.mean([float(r["achieved_bpp"]) for r in ok]))
            assert float(s["mean_achieved_bpp"]) <= float(s["target_bpp"])
            assert float(s["encode_mp_s"]) > 0
        else:
            assert s["mean_psnr"] == s["mean_achieved_bpp"] == ""
    partial = next(s for s in report["summary"] if s["codec"] == "jpeg" and s["target_bpp"] == 0.4)
    assert (partial["reached"], partial["unreachable"], partial["complete"]) == (1, 1, False)
    assert partial["max_needed_bpp"] > 0.4


def test_rd_bjontegaard_uses_complete_points_only(rd_run):
    report = json.loads((rd_run / "summary.json").read_text())
    summary = report["summary"]
    bd = report["bjontegaard"]
    assert bd["method"].startswith(metrics.BD_METHOD)
    for codec in ("avif-half", "jpeg"):
        complete = sorted(s["target_bpp"] for s in summary if s["codec"] == codec and s["complete"])
        used = bd["points"][codec]["used"]
        assert [p["target_bpp"] for p in used] == complete
        excluded = {p["target_bpp"] for p in bd["points"][codec]["excluded"]}
        assert excluded == set(TARGETS) - set(complete)
    assert [p["target_bpp"] for p in bd["points"]["jpeg"]["used"]] == [1.0, 2.0, 4.0]
    # Against avif-half: each delta is either the metric recomputed from the used points, or absent with a reason.
    entry = bd["against"]["avif-half"]
    assert entry["available"]
    result = entry["results"]["jpeg"]
    a, t = bd["points"]["avif-half"]["used"], bd["points"]["jpeg"]["used"]
    for key, quality, fn in (("bd_rate_psnr_pct", "psnr", metrics.bd_rate), ("bd_psnr_db", "psnr", metrics.bd_psnr),
                             ("bd_rate_ms_ssim_pct", "ms_ssim_db", metrics.bd_rate)):
        args = ([p["bpp"] for p in a], [p[quality] for p in a], [p["bpp"] for p in t], [p[quality] for p in t])
        try:
            expected = fn(*args)
        except ValueError:
            assert result[key] is None and any(n.startswith(key) for n in result["notes"])
        else:
            assert result[key] == pytest.approx(expected) and math.isfinite(result[key])
    # avif was not benchmarked: said, not crashed.
    assert not bd["against"]["avif"]["available"] and "not benchmarked" in bd["against"]["avif"]["reason"]
    bd_rows = _csv(rd_run / "bd.csv")
    assert {(r["anchor"], r["codec"]) for r in bd_rows} == {("avif-half", "jpeg"), ("avif-best", ""), ("avif", "")}


def test_rd_without_a_learned_model_skips_it_with_a_note(folder, tmp_path, capsys):
    argv = ["bench", "rd", str(folder), "--codecs", "learned", "jpeg", "--bpp", "2", "--limit", "1",
            "--device", "cpu", "--decoders", "coarse", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "summary.json").read_text())
    rows = _csv(tmp_path / "per_image.csv")
    assert report["images"] == ["a_gradient.png"]
    if default_model_available():
        assert "learned" in report["codecs"]
        assert {r["codec"] for r in rows} == {"learned", "jpeg"}
    else:
        assert "no learned model is bundled" in report["skipped_codecs"]["learned"]
        assert "learned skipped" in capsys.readouterr().err
        assert {r["codec"] for r in rows} == {"jpeg"}
        assert list(report["codecs"]) == ["jpeg"]


def test_rd_refuses_a_missing_folder_and_unknown_codecs(tmp_path, folder, capsys):
    assert cli.main(["bench", "rd", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "FOLDER" in err
    assert cli.main(["bench", "rd", str(folder), "--codecs", "png", "--out", str(tmp_path / "o")]) == 1
    assert "unknown codec 'png'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_speed_times_a_reference_codec_encode(tmp_path):
    argv = ["bench", "speed", "--codec", "jpeg", "--width", "256", "--height", "128", "--repeat", "2",
            "--warmup", "0", "--bpp", "1", "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "speed.json").read_text())
    rows = _csv(tmp_path / "speed.csv")
    assert report["device"] == "cpu" and "torch threads" in report["device_name"]
    assert "params" not in report and "no networks" in report["network_note"]
    assert [r["stage"] for r in rows] == ["encode", "encode+verify", "decode"]
    for row in rows:
        assert row["status"] == "ok" and int(row["repeat"]) == 2
        assert float(row["fps"]) == pytest.approx(1 / float(row["mean_s"]))
        assert float(row["mp_s"]) == pytest.approx(256 * 128 / 1e6 / float(row["mean_s"]))
        assert float(row["min_s"]) <= float(row["median_s"]) <= 2 * float(row["mean_s"])
    # encode+verify is timed as archiving runs it (an encode, then the decode of its bitstream), not summed.
    assert rows[1]["note"].endswith("then codec.decode") and "timed together" in report["stages"]["encode+verify"]


def test_speed_times_every_size_given(tmp_path, capsys):
    argv = ["bench", "speed", "--codec", "jpeg", "--sizes", "96x64", "kodak", "--threads", "1", "--repeat", "1",
            "--warmup", "0", "--bpp", "2", "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "speed.json").read_text())
    rows = _csv(tmp_path / "speed.csv")
    assert [(s["width"], s["height"]) for s in report["sizes"]] == [(96, 64), (768, 512)]
    assert report["torch_threads"] == 1
    assert [(int(r["width"]), r["stage"]) for r in rows] == [
        (w, stage) for w in (96, 768) for stage in ("encode", "encode+verify", "decode")]
    assert float(rows[-1]["megapixels"]) == pytest.approx(768 * 512 / 1e6)
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "speed", "--sizes", "big", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


@pytest.mark.skipif(not default_model_available(),
                    reason="no learned model is bundled (coldpress/codec/weights/MODELS.json)")
def test_speed_of_the_learned_encoder(tmp_path):
    import torch

    argv = ["bench", "speed", "--codec", "learned", "--device", "cpu", "--width", "256", "--height", "128",
            "--batch", "1", "2", "--repeat", "1", "--warmup", "1", "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "speed.json").read_text())
    rows = _csv(tmp_path / "speed.csv")
    assert [(r["stage"], int(r["batch"])) for r in rows] == [
        ("g_a", 1), ("g_a+h_a", 1), ("g_a", 2), ("g_a+h_a", 2), ("encode", 1), ("encode+verify", 1), ("decode", 1)]
    assert all(float(r["fps"]) > 0 for r in rows if r["status"] == "ok")
    assert rows[-1]["status"] in ("ok", "unreachable")
    assert "latent codings" in rows[-3]["note"] or rows[-3]["status"] == "unreachable"

    # Parameters and FLOPs against an independent count over the same modules.
    from coldpress.codec import get_codec

    net = get_codec("learned", device="cpu").net
    assert report["params"]["g_a"] == sum(p.numel() for p in net.g_a.parameters())
    flops = 0

    def count(module, inputs, output):
        nonlocal flops
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            flops += 2 * module.in_channels // module.groups * module.out_channels * k * output[0, 0].numel()
        else:  # GDN: a 1x1 convolution of the squared input over its channels
            c = inputs[0].shape[1]
            flops += 2 * c * c * inputs[0][0, 0].numel()

    hooks = [m.register_forward_hook(count) for m in net.g_a.modules()
             if isinstance(m, torch.nn.Conv2d) or type(m).__name__ == "GDN"]
    w, h = report["network_input"]
    with torch.no_grad():
        net.g_a(torch.zeros(1, 3, h, w))
    for hook in hooks:
        hook.remove()
    assert report["gflops_per_frame"]["g_a"] == pytest.approx(flops / 1e9)
    assert report["gflops_per_frame"]["g_a+h_a"] > report["gflops_per_frame"]["g_a"]
