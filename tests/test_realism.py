"""Realism measures (coldpress.realism): NIQE, sliced Wasserstein distance, high-frequency energy
ratio and the crops figure, checked on the shipped sample photographs and their distortions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import ndimage, stats

from coldpress import realism, samples_path
from coldpress.realism import _pyramid
from synthetic_images import natural_image

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT.parent / "shared" / "data" / "train"


def _photos() -> dict[str, np.ndarray]:
    out = {}
    for p in sorted(samples_path().glob("*.jpg")):
        with Image.open(p) as im:
            out[p.stem] = np.asarray(im.convert("RGB"))
    assert len(out) >= 4, f"expected the 4 sample photographs in {samples_path()}"
    return out


PHOTOS = _photos()


def _blur(image: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def _noisy(image: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(image + rng.normal(0, sigma, image.shape)), 0, 255).astype(np.uint8)


def _coarse(image: np.ndarray, factor: int = 4) -> np.ndarray:
    """What an extreme-rate codec's coarse decode looks like: detail lost below 1/factor resolution."""
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((w // factor, h // factor), Image.Resampling.BICUBIC)
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC))


# -- NIQE ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_niqe_scores_blur_worse_than_the_sharp_photo(name):
    image = PHOTOS[name]
    sharp, blur1, blur3 = realism.niqe(image), realism.niqe(_blur(image, 1.0)), realism.niqe(_blur(image, 3.0))
    assert sharp < blur1 < blur3, (name, sharp, blur1, blur3)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_niqe_scores_strong_noise_worse(name):
    image = PHOTOS[name]
    assert realism.niqe(_noisy(image, 30.0)) > realism.niqe(image) + 1.0


def test_niqe_is_deterministic_and_ignores_alpha_and_memory_layout():
    image = PHOTOS["astronaut"]
    value = realism.niqe(image)
    assert realism.niqe(image.copy()) == value
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 7, np.uint8)], axis=2)
    assert realism.niqe(rgba) == value
    wide = np.zeros((image.shape[0], 2 * image.shape[1], 3), np.uint8)
    wide[:, ::2] = image  # a strided view of the same pixels
    assert realism.niqe(wide[:, ::2]) == value
    assert 0.0 < value < 50.0


def test_niqe_features_cover_whole_patches_at_two_scales():
    features, sharpness = realism.niqe_features(natural_image(512, 768, seed=3))
    assert features.shape == (5 * 8, realism.NIQE_FEATURES)  # 768x512 is cropped to 768x480
    assert sharpness.shape == (40,)
    features, _ = realism.niqe_features(natural_image(300, 451, seed=3))
    assert features.shape == (3 * 4, 36)


def test_niqe_rejects_images_under_two_patches_a_side():
    with pytest.raises(ValueError, match=r"at least 192x192 pixels \(2 patches of 96 px") as e:
        realism.niqe(natural_image(191, 400))
    assert "400x191" in str(e.value)
    with pytest.raises(ValueError, match="192x192"):
        realism.niqe(natural_image(400, 150))
    realism.niqe(natural_image(192, 192))  # the smallest size it accepts


def test_niqe_rejects_flat_images_and_wrong_dtypes():
    with pytest.raises(ValueError, match="flat"):
        realism.niqe(np.full((256, 256, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        realism.niqe(PHOTOS["coffee"].astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\) grey image"):
        realism.niqe(np.zeros((256, 256, 5), np.uint8))


@pytest.mark.parametrize("shape,left,right", [(0.6, 1.0, 1.0), (1.3, 0.5, 1.5), (2.0, 2.0, 0.7)])
def test_aggd_fit_recovers_the_parameters_of_generated_samples(shape, left, right):
    # An AGGD is a generalised normal (scipy.stats.gennorm) of scale `left` below 0 and `right`
    # above; the mass on each side is proportional to its scale.
    rng = np.random.default_rng(0)
    n = 400_000
    z = np.abs(stats.gennorm.rvs(shape, size=n, random_state=rng))
    negative = rng.random(n) < left / (left + right)
    x = np.where(negative, -left * z, right * z)
    alpha, bl, br = realism.aggd_fit(x)
    assert alpha[0] == pytest.approx(shape, rel=0.03)
    assert bl[0] == pytest.approx(left, rel=0.03)
    assert br[0] == pytest.approx(right, rel=0.03)


def test_aggd_fit_is_undefined_without_both_signs():
    alpha, bl, br = realism.aggd_fit(np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [-1.0, 1.0, 0.5]]))
    assert np.isnan(alpha[:2]).all() and np.isfinite(alpha[2])


def test_shipped_pristine_model_is_a_valid_gaussian_fitted_on_training_images():
    model = realism.load_niqe_model()
    assert model.mu.shape == (36,)
    assert np.allclose(model.cov, model.cov.T)
    assert np.linalg.eigvalsh(model.cov).min() > 0  # full rank: more patches than features
    info = model.info
    assert info["sharpness_threshold"] == realism.NIQE_SHARPNESS_THRESHOLD and info["patch"] == 96
    assert info["patches"] > 10 * 36 and info["images"] == sum(info["folders"].values())
    assert not any("eval" in f or "kodak" in f for f in info["folders"])
    assert "not comparable" in info["note"]


def _fit_tool():
    spec = importlib.util.spec_from_file_location("fit_niqe", ROOT / "tools" / "fit_niqe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not TRAIN.is_dir(), reason="../shared/data/train is absent: cannot check what the NIQE model was fitted on")
def test_shipped_pristine_model_names_the_files_it_was_fitted_on():
    tool = _fit_tool()
    info = realism.load_niqe_model().info
    files = tool.training_files(TRAIN, tuple(info["folders"]))
    assert len(files) == info["images"]
    assert tool.file_list_digest(files) == info["files_sha256"]


def test_pristine_patches_are_the_sharp_ones():
    image = PHOTOS["astronaut"].copy()  # 480x480: 5x5 patches
    image[:, :288] = _blur(image, 4.0)[:, :288]  # blur the left 3 patch columns
    features, sharpness = realism.niqe_features(image)
    kept = realism.pristine_patches(image)
    right = sharpness.reshape(5, 5)[:, 3:].ravel()
    assert 0 < len(kept) <= len(right)
    rows = {tuple(r) for r in features.reshape(5, 5, 36)[:, 3:].reshape(-1, 36)}
    assert all(tuple(r) in rows for r in kept)  # only patches of the sharp right half
    assert len(realism.pristine_patches(image, threshold=0.0)) == 25


def test_fit_tool_writes_a_model_that_ranks_blur_and_checks_it(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    # Sharp, undistorted images with different patch grids: the photos, shifted by half a
    # patch, and mirrored (NIQE's diagonal features then swap).
    for name, image in PHOTOS.items():
        for shift in (0, 48):
            crop = Image.fromarray(image[shift:, shift:])
            crop.save(folder / f"{name}-{shift}.png")
            crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"{name}-{shift}-flipped.png")
    out = tmp_path / "model.json"
    tool = _fit_tool()
    args = ["--data", str(tmp_path), "--folders", "photos", "--out", str(out), "--threshold", "0.5"]
    assert tool.main(args) == 0
    model = realism.NiqeModel.load(out)
    assert model.info["images"] == 16 and model.info["folders"] == {"photos": 16}
    assert model.info["sharpness_threshold"] == 0.5
    image = PHOTOS["coffee"]
    assert realism.niqe(image, model) < realism.niqe(_blur(image, 2.0), model)
    assert tool.main([*args, "--check"]) == 0
    data = json.loads(out.read_text())
    data["mu"][0] += 0.01
    out.write_text(json.dumps(data))
    assert tool.main([*args, "--check"]) == 1


def test_fit_needs_more_patches_than_features():
    with pytest.raises(ValueError, match="pristine patches found, fewer than the 37"):
        realism.fit_niqe_model([PHOTOS["coffee"]])


def test_model_file_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="fit one with tools/fit_niqe.py"):
        realism.NiqeModel.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"mu": [1, 2], "cov": [[1]]}')
    with pytest.raises(ValueError, match=r"mu of shape \(36,\).*refit"):
        realism.NiqeModel.load(tmp_path / "bad.json")


# -- Laplacian pyramid -----------------------------------------------------------------------------


def test_pyramid_filters_are_opencvs_pyrdown_and_pyrup():
    # pyrDown: 2-D 5x5 binomial blur (mirrored border) then every other pixel; pyrUp: zeros
    # inserted, then 4 times that blur. Check the separable implementation against the 2-D filter.
    rng = np.random.default_rng(0)
    a = rng.normal(size=(37, 50))
    k2 = np.outer(_pyramid._BINOMIAL, _pyramid._BINOMIAL)
    assert np.allclose(_pyramid._pyr_down(a), ndimage.convolve(a, k2, mode="mirror")[::2, ::2])
    small = _pyramid._pyr_down(a)
    assert small.shape == (19, 25)
    up = np.zeros_like(a)
    up[::2, ::2] = small
    assert np.allclose(_pyramid._pyr_up(small, a.shape), ndimage.convolve(up, 4 * k2, mode="mirror"))
    assert np.allclose(_pyramid._pyr_up(np.full((19, 25), 3.0), (37, 50)), 3.0)  # DC gain 1


def test_pyramid_levels_go_down_to_16_px():
    assert realism.pyramid_levels(512, 768) == 6  # 512, 256, 128, 64, 32, 16
    assert realism.pyramid_levels(320, 480) == 5  # 320 ... 20
    assert realism.pyramid_levels(15, 100) == 0
    bands = realism.laplacian_pyramid(np.zeros((3, 64, 80)), 3)
    assert [b.shape for b in bands] == [(3, 64, 80), (3, 32, 40), (3, 16, 20)]


# -- sliced Wasserstein distance -------------------------------------------------------------------


@pytest.mark.parametrize("normalise", ["each", "originals"])
def test_swd_of_identical_images_is_zero(normalise):
    a, b = PHOTOS["coffee"], PHOTOS["chelsea"]
    assert realism.sliced_wasserstein(a, a.copy(), normalise=normalise) == 0.0
    assert realism.sliced_wasserstein([a, b], [a, b], normalise=normalise) == 0.0


@pytest.mark.parametrize("normalise", ["each", "originals"])
@pytest.mark.parametrize("name", ["astronaut", "rocket"])
def test_swd_grows_with_blur_and_with_lost_detail(name, normalise):
    image = PHOTOS[name]
    d1 = realism.sliced_wasserstein_levels(image, _blur(image, 1.0), normalise=normalise)
    d3 = realism.sliced_wasserstein_levels(image, _blur(image, 3.0), normalise=normalise)
    assert 0 < d1[0] < d3[0]  # the finest band
    assert 0 < np.mean(d1) < np.mean(d3)
    assert realism.sliced_wasserstein(image, _coarse(image), normalise=normalise) > np.mean(d1)


def test_swd_grows_with_noise():
    image = PHOTOS["astronaut"]
    weak = realism.sliced_wasserstein(image, _noisy(image, 5.0))
    strong = realism.sliced_wasserstein(image, _noisy(image, 25.0))
    assert 0 < weak < strong


def test_swd_is_deterministic_with_its_seed_and_reports_each_level():
    image = PHOTOS["rocket"]
    other = _blur(image, 1.5)
    levels = realism.sliced_wasserstein_levels(image, other, seed=3)
    assert len(levels) == realism.pyramid_levels(*image.shape[:2]) == 5
    assert realism.sliced_wasserstein_levels(image, other, seed=3) == levels
    assert realism.sliced_wasserstein(image, other, seed=3) == pytest.approx(np.mean(levels))
    different = realism.sliced_wasserstein_levels(image, other, seed=4)
    assert different != levels
    assert np.mean(different) == pytest.approx(np.mean(levels), rel=0.25)  # the seed moves it little
    assert len(realism.sliced_wasserstein_levels(image, other, levels=2)) == 2


def test_swd_pools_lists_of_pairs_of_different_sizes():
    a, b = PHOTOS["astronaut"], PHOTOS["chelsea"]
    pooled = realism.sliced_wasserstein([a, b], [_blur(a, 2.0), _blur(b, 2.0)])
    single = realism.sliced_wasserstein(a, _blur(a, 2.0))
    assert pooled > 0 and pooled != single
    grey = np.asarray(Image.fromarray(a).convert("L"))
    assert realism.sliced_wasserstein(grey, _blur(grey, 2.0)) > 0


def test_swd_errors_say_what_to_do():
    a = PHOTOS["coffee"]
    with pytest.raises(ValueError, match="2 originals but 1 reconstructions"):
        realism.sliced_wasserstein([a, a], [a])
    with pytest.raises(ValueError, match="same size"):
        realism.sliced_wasserstein(a, a[:100])
    with pytest.raises(ValueError, match="at least 16 px a side"):
        realism.sliced_wasserstein(a[:12, :12], a[:12, :12])
    with pytest.raises(ValueError, match="fewer levels"):
        realism.sliced_wasserstein(a, a, levels=9)
    with pytest.raises(ValueError, match="mix grey and colour"):
        grey = np.asarray(Image.fromarray(a).convert("L"))
        realism.sliced_wasserstein([a, grey], [a, grey])
    with pytest.raises(ValueError, match="'each' \\(ProGAN\\) or 'originals'"):
        realism.sliced_wasserstein(a, a, normalise="both")
    with pytest.raises(ValueError, match="non-empty list"):
        realism.sliced_wasserstein([], [])


# -- high-frequency energy ratio -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_hf_ratio_is_one_for_a_copy_below_for_blur_above_for_noise(name):
    image = PHOTOS[name]
    assert realism.high_frequency_energy_ratio(image, image.copy()) == 1.0
    r1 = realism.high_frequency_energy_ratio(image, _blur(image, 0.7))
    r2 = realism.high_frequency_energy_ratio(image, _blur(image, 2.0))
    assert r2 < r1 < 1.0
    assert realism.high_frequency_energy_ratio(image, _coarse(image)) < 0.3
    n1 = realism.high_frequency_energy_ratio(image, _noisy(image, 5.0))
    n2 = realism.high_frequency_energy_ratio(image, _noisy(image, 20.0))
    assert 1.0 < n1 < n2


def test_hf_ratio_pools_pairs_by_pixels():
    a = PHOTOS["coffee"]
    blurred = _blur(a, 1.0)
    assert realism.high_frequency_energy_ratio([a, a], [blurred, blurred]) == pytest.approx(
        realism.high_frequency_energy_ratio(a, blurred)
    )
    b = PHOTOS["astronaut"]
    ea, eb = realism.high_frequency_energy(a), realism.high_frequency_energy(b)
    expected = (a[..., 0].size * realism.high_frequency_energy(blurred) + b[..., 0].size * eb) / (
        a[..., 0].size * ea + b[..., 0].size * eb
    )
    assert realism.high_frequency_energy_ratio([a, b], [blurred, b]) == pytest.approx(expected)


def test_hf_ratio_of_a_flat_original_is_an_error():
    flat = np.full((64, 64, 3), 90, np.uint8)
    with pytest.raises(ValueError, match="no high-frequency energy"):
        realism.high_frequency_energy_ratio(flat, _noisy(flat, 5.0))


def test_realism_row_names_the_bench_columns():
    image = PHOTOS["chelsea"]
    row = realism.realism_row(image, image)
    assert set(row) == {"niqe", "swd_x1e3", "hf_energy_ratio"}
    assert row["swd_x1e3"] == 0.0 and row["hf_energy_ratio"] == 1.0
    assert row["niqe"] == realism.niqe(image)


# -- crops figure ----------------------------------------------------------------------------------


def test_crops_figure_writes_the_crops_pixel_for_pixel_with_labels(tmp_path):
    image = PHOTOS["astronaut"]
    crops = [image[10:74, 20:116], image[200:264, 300:396]]  # two 96x64 regions
    columns = {
        "original": crops,
        "avif-half": [_blur(c, 1.0) for c in crops],
        "coarse": [_blur(c, 2.0) for c in crops],
        "diffusion": [_noisy(c, 5.0) for c in crops],
    }
    path = tmp_path / "results" / "crops.png"
    size = realism.crops_figure(path, columns, zoom=2, gap=4, label_height=20, title="Kodak at 0.03 bpp")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        pixels = np.asarray(im)
    width, height = 4 * 192 + 5 * 4, 2 * 20 + 2 * 128 + 3 * 4
    assert size == (width, height) and pixels.shape == (height, width, 3)
    for j, column in enumerate(columns.values()):
        for r, crop in enumerate(column):
            x, y = 4 + j * (192 + 4), 40 + 4 + r * (128 + 4)
            assert np.array_equal(pixels[y : y + 128, x : x + 192], np.repeat(np.repeat(crop, 2, 0), 2, 1))
        label = pixels[20:40, 4 + j * 196 : 4 + j * 196 + 192]
        assert (label < 128).any()  # the column's label is drawn
    assert (pixels[:20] < 128).any()  # and the title


def test_crops_figure_rejects_mismatched_crops(tmp_path):
    a = PHOTOS["coffee"][:64, :64]
    with pytest.raises(ValueError, match="same, non-zero number of crops"):
        realism.crops_figure(tmp_path / "x.png", {"original": [a, a], "coarse": [a]})
    with pytest.raises(ValueError, match="same region"):
        realism.crops_figure(tmp_path / "x.png", {"original": [a], "coarse": [a[:32]]})
    with pytest.raises(ValueError, match="no columns"):
        realism.crops_figure(tmp_path / "x.png", {})
    assert not (tmp_path / "x.png").exists()
