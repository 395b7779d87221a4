"""The learned codec with its shipped weights: loading, round trips, rate control, real bitstreams,
determinism across processes and thread counts, tiling, identity checks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from coldpress.codec import container, get_codec
from coldpress.codec.models import default_model_available, load_weights, registry
from coldpress.errors import BitstreamError, ColdpressError, ModelMismatchError
from synthetic_images import natural_image, psnr, torch_threads

KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval" / "kodak"

pytestmark = pytest.mark.skipif(
    not default_model_available(), reason="no learned model is bundled (coldpress/codec/weights/MODELS.json)"
)


@pytest.fixture(scope="module")
def codec():
    return get_codec("learned", device="cpu")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo when ../shared/data is present (a 384x256 crop of kodim23), else a synthetic one."""
    path = KODAK / "kodim23.png"
    if path.exists():
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB"))[128:384, 192:576].copy()
    return natural_image(256, 384, "RGB", seed=3)


def test_shipped_weights_are_registered_and_verified():
    reg = registry()
    assert reg["default"] in reg["models"]
    entry = reg["models"][reg["default"]]
    weights = Path(__file__).resolve().parents[1] / "coldpress" / "codec" / "weights" / entry["file"]
    assert weights.stat().st_size < 30e6
    _, meta, digest = load_weights(weights, entry["sha256"])
    assert digest == entry["sha256"]
    assert json.loads(meta["config"])["latent_stride"] in (16, 32)


def test_loading_refuses_a_tampered_weights_file(tmp_path):
    reg = registry()
    entry = reg["models"][reg["default"]]
    src = Path(__file__).resolve().parents[1] / "coldpress" / "codec" / "weights" / entry["file"]
    bad = tmp_path / "bad.safetensors"
    data = bytearray(src.read_bytes())
    data[-10] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ColdpressError, match="sha256"):
        load_weights(bad, entry["sha256"])


@pytest.mark.parametrize("bpp", [0.03, 0.1])
def test_round_trip_lands_at_or_below_target_within_10_percent(codec, photo, bpp):
    result = codec.encode(photo, bpp)
    assert result.achieved_bpp <= bpp
    assert result.achieved_bpp >= 0.9 * bpp, result.params
    out = codec.decode(result.bitstream)
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert psnr(photo, out) > 20.0


def test_more_bits_give_better_quality(codec, photo):
    low = codec.decode(codec.encode(photo, 0.02).bitstream)
    high = codec.decode(codec.encode(photo, 0.15).bitstream)
    assert psnr(photo, high) > psnr(photo, low) + 1.0


def test_file_size_matches_the_models_rate_estimate(codec, photo):
    for q16 in (0, 40, 80):
        payload = codec._code_latent(codec.analysis(photo, 8), q16)
        estimate = codec.estimate_bits(photo, q16) / 8
        # Within 4 %, plus the fixed cost of real streams: each rANS stream (z and y; with a checkerboard
        # context y is two streams) ends with a 4-byte state flush, and stream lengths are varints.
        fixed = 3 * 4 + 4 if codec.loaded.has_context else 2 * 4 + 2
        assert abs(len(payload) - fixed - estimate) / estimate < 0.04, (q16, len(payload), estimate)


def test_grayscale_and_rgba(codec):
    gray = natural_image(64, 96, "L", seed=1)
    out = codec.decode(codec.encode(gray, 0.2).bitstream)
    assert out.shape == gray.shape
    rgba = natural_image(64, 96, "RGBA", seed=2)
    yy, xx = np.mgrid[:64, :96]
    rgba[:, :, 3] = np.where((yy - 32) ** 2 + (xx - 48) ** 2 < 28**2, 255, 0)  # a cut-out: alpha stays lossless
    out = codec.decode(codec.encode(rgba, 1.0).bitstream)
    assert out.shape == rgba.shape
    assert np.array_equal(out[:, :, 3], rgba[:, :, 3])


def test_odd_sizes_are_padded(codec):
    for h, w in [(1, 1), (17, 203), (130, 65)]:
        img = natural_image(h, w, "RGB", seed=h)
        out = codec.decode(codec.encode(img, max(0.3, 8 * 1000 / (h * w))).bitstream)  # room for the header
        assert out.shape == img.shape


_DECODE_IN_CHILD = r"""
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from coldpress.codec import decode_bitstream
data = open(sys.argv[2], "rb").read()
print(hashlib.sha256(decode_bitstream(data, device="cpu").tobytes()).hexdigest())
"""


def test_decoding_is_identical_across_processes_and_thread_counts(codec, photo, tmp_path):
    data = codec.encode(photo, 0.05).bitstream
    with torch_threads(2):
        here = hashlib.sha256(codec.decode(data).tobytes()).hexdigest()
    path = tmp_path / "b.cp"
    path.write_bytes(data)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for threads in (1,):  # another process, another thread count
        out = subprocess.run([sys.executable, "-c", _DECODE_IN_CHILD, str(threads), str(path)],
                             capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip() == here, f"decode with {threads} threads differs"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: CPU/GPU identity is checked where a GPU is lent")
def test_gpu_and_cpu_decode_to_the_same_pixels(codec, photo):
    """float64 models: identical pixels; float32 models: at most one level apart (DEVELOPERS.md)."""
    tolerance = 0 if codec.loaded.decode_precision == "float64" else 1
    data = codec.encode(photo, 0.05).bitstream  # encoded on CPU
    gpu = get_codec("learned", device="cuda")
    assert np.abs(gpu.decode(data).astype(int) - codec.decode(data)).max() <= tolerance
    data_gpu = gpu.encode(photo, 0.05).bitstream  # encoded on the GPU, decoded on the CPU
    assert np.abs(codec.decode(data_gpu).astype(int) - gpu.decode(data_gpu)).max() <= tolerance


def test_float32_models_decode_identically_across_processes_and_threads_and_near_float64(photo, tmp_path):
    """A model published with float32 synthesis (what new exports record): the same pixels in other
    processes with 1 and 2 threads, within one level of the float64 decode of the same latent."""
    from coldpress.codec.models import MODELS_PATH_ENV
    from synthetic_images import model_file

    folder = tmp_path / "models"
    folder.mkdir()
    path = model_file(folder, "test-float32-model", source="cp-extreme-s16-v2", decode_precision="float32")
    fast = get_codec("learned", model=str(path), device="cpu")
    assert fast.loaded.decode_precision == "float32" and fast._float32_decode()
    data = fast.encode(photo, 0.05).bitstream
    with torch_threads(2):
        pixels = fast.decode(data)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), **{MODELS_PATH_ENV: str(folder)})
    (tmp_path / "b.cp").write_bytes(data)
    for threads in (1,):  # another process, another thread count
        out = subprocess.run([sys.executable, "-c", _DECODE_IN_CHILD, str(threads), str(tmp_path / "b.cp")],
                             capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip() == hashlib.sha256(pixels.tobytes()).hexdigest(), f"{threads} threads differ"
    # The same payload under the float64 model with these weights.
    slow = get_codec("learned", model="cp-extreme-s16-v2", device="cpu")
    b = container.unpack(data)
    as_slow = container.pack(container.Bitstream(**{**b.__dict__, "model_id": slow.model_id,
                                                    "weights_hash": slow.weights_hash}))
    reference = slow.decode(as_slow)
    assert slow.loaded.decode_precision == "float64"
    assert np.abs(reference.astype(int) - pixels).max() <= 1


def test_entropy_parameters_do_not_depend_on_thread_count(codec, photo):
    y = codec.analysis(photo, 8)
    z = codec.net.h_a(y)
    z_hat = codec.net.entropy_bottleneck.decompress(codec.net.entropy_bottleneck.compress(z), z.shape[-2:])
    results = []
    for threads in (1, 2):
        with torch_threads(threads):
            means, scales = codec.loaded.hyper_parameters(z_hat)
            results.append((means, codec.loaded.scale_indexes(scales)))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_encoding_does_not_depend_on_thread_count(codec, photo):
    """The channels-last analysis (oneDNN) computes the same latent, so the same bytes, on 1 and 2 threads,
    tiled (a 1152-pixel-wide image, above the 1024-pixel analysis tile) or not: re-runs of a job with
    other worker sizes archive the same bitstreams."""
    wide = np.concatenate([photo, photo[:, ::-1], photo[:, :384]], axis=1)
    assert wide.shape[1] > 1024
    for img in (photo, wide):
        coded = []
        for threads in (1, 2):
            with torch_threads(threads):
                coded.append((codec.encode(img, 0.05).bitstream, codec.analysis(img, 8)))
        assert coded[0][0] == coded[1][0] and torch.equal(coded[0][1], coded[1][1])


def test_tiled_encoding_has_no_seams():
    """The encoder's analysis tiles (the ``tile`` option) leave no visible seam and cost no quality."""
    whole = get_codec("learned", device="cpu", tile=4096)
    tiled = get_codec("learned", device="cpu", tile=256)
    img = natural_image(320, 576, "RGB", seed=7)
    a = whole.decode(whole.encode(img, 0.1).bitstream)
    b = tiled.decode(tiled.encode(img, 0.1).bitstream)
    # Seams would show as a jump across the tile border (column 256): compare with its neighbours.
    jump = np.abs(b[:, 256].astype(int) - b[:, 255].astype(int)).mean()
    ref = np.abs(b[:, 200].astype(int) - b[:, 199].astype(int)).mean()
    assert jump < ref + 3.0
    assert psnr(img, b) > psnr(img, a) - 0.5


def test_decoded_pixels_do_not_depend_on_the_tile_option():
    """Decoding uses the model's recorded tiling: a codec built with another ``tile`` decodes a large
    image to exactly the same pixels (before, ``tile`` reached the decoder and moved the seams)."""
    img = natural_image(96, 1536, "RGB", seed=3)
    data = get_codec("learned", device="cpu").encode(img, 0.03).bitstream
    a = get_codec("learned", device="cpu", tile=4096).decode(data)
    b = get_codec("learned", device="cpu", tile=256).decode(data)
    assert np.array_equal(a, b)


def test_new_exports_decode_like_an_untiled_decode(monkeypatch):
    """The tiling a new export records has a halo covering the measured receptive field, so its tiled
    decode equals the untiled one; the legacy 64 px halo of v1/v2 (kept for their bitstreams) does not."""
    from coldpress.codec.models import LEGACY_DECODE_TILING, DecodeTiling, decode_tiling_for
    from coldpress.codec.networks import synthesis_receptive_radius

    codec = get_codec("learned", device="cpu")
    net, loaded = codec.net, codec.loaded
    radius = synthesis_receptive_radius(net.g_s, net.cfg.latent_channels)
    assert 100 <= radius <= 128  # about 6.7 latent positions of the 1/16 latent, counted in whole positions
    # The shipped model's recorded tiling covers the field: decodes use the balanced grid for it.
    assert loaded.decode_tiling != LEGACY_DECODE_TILING and loaded.decode_tiling.halo >= radius
    tiling = decode_tiling_for(net.g_s, net.cfg, tile=64)
    assert tiling.halo >= radius and tiling.halo % net.cfg.latent_stride == 0
    # The balanced grid of this tiling cuts the 12x48 latent of a 192x768 image into several tiles.
    from coldpress.codec.learned import balanced_grid

    s = net.cfg.latent_stride
    rows, cols = balanced_grid(192 // s, 768 // s, tiling.tile // s, tiling.halo // s)
    assert (len(rows) - 1) * (len(cols) - 1) > 1
    data = codec.encode(natural_image(192, 768, "RGB", seed=5), 0.03).bitstream
    params = container.unpack(data)
    decoded = {}
    recorded = loaded.decode_tiling
    try:
        for name, t in (("untiled", DecodeTiling(1 << 20, 0)), ("new", tiling), ("short halo", DecodeTiling(64, 64))):
            loaded.decode_tiling = t
            codec.forget_decodes()  # decode each time under this tiling, not from what the encode kept
            decoded[name] = codec.decode(data)
    finally:
        loaded.decode_tiling = recorded  # the shared model's own (v1/v2: LEGACY_DECODE_TILING)
    assert params.width == 768
    assert np.array_equal(decoded["new"], decoded["untiled"])
    # The back stage (last two upsamplings and the tail) in tiles of 64 output pixels, with the few
    # pixels of halo its own receptive field needs: still the untiled pixels.
    import coldpress.codec.learned as learned

    monkeypatch.setattr(learned, "BACK_TILE", 64)
    codec.forget_decodes()
    assert np.array_equal(codec.decode(data), decoded["untiled"])
    assert loaded.back_stage[0] == 4 and 1 <= loaded.back_stage[1] <= 4  # x4, a few quarter-resolution pixels
    assert not np.array_equal(decoded["short halo"], decoded["untiled"])  # a 64 px halo, as v1/v2's, is not enough


def test_a_window_decodes_to_exactly_the_whole_decodes_pixels_from_fewer_latents(codec):
    """``decode_window`` synthesises only the latents within the recorded halo of the window: the same
    pixels as the whole decode, at the image's borders and corners, inside it, and for a window of it all."""
    img = natural_image(460, 600, "RGB", seed=11)  # neither side a multiple of the total stride, 64
    data = codec.encode(img, 0.1).bitstream
    assert container.unpack(data).params["s"] == 8  # coded at full scale: the window path, not decode-and-crop
    codec.forget_decodes()
    full = codec.decode(data)
    synthesised = []
    pixels = codec._pixels

    def counting(synthesis, y_hat, *rest):
        synthesised.append(y_hat.shape[-2] * y_hat.shape[-1])
        return pixels(synthesis, y_hat, *rest)

    codec._pixels = counting
    try:
        for window in ((0, 0, 40, 30), (260, 200, 64, 48), (600 - 37, 460 - 19, 37, 19), (1, 442, 598, 18),
                       (0, 0, 600, 460), (333, 17, 1, 1)):
            c, r, w, h = window
            part = codec.decode_window(data, window)
            assert part.shape == (h, w, 3) and np.array_equal(part, full[r:r + h, c:c + w]), window
    finally:
        del codec._pixels
    latents = (512 // 16) * (640 // 16)  # the latent of the image padded to the total stride, 64
    assert synthesised[-1] < latents / 4 and max(synthesised) == latents  # the window of it all: the whole latent
    with pytest.raises(ValueError, match="not inside"):
        codec.decode_window(data, (590, 0, 20, 10))


def test_a_float32_decode_is_within_one_level_of_its_float64_reference():
    """The reproducibility contract between kinds of device, measured where it can be on one machine: the
    float32 decode of a v3 bitstream against the float64 synthesis of the same latent (the reference,
    the same on every device); float64 models are their own reference and record no check."""
    from coldpress.codec.precision_check import checked_against_reference
    from coldpress.transforms.records import pixels_sha256

    img = natural_image(160, 224, "RGB", seed=11)
    codec = get_codec("learned", device="cpu")
    data = codec.encode(img, 0.1).bitstream
    assert container.unpack(data).params["s"] == 8  # coded at full size: the reference is of these pixels
    with checked_against_reference() as check:
        pixels = codec.decode(data)
    assert check.decodes == 1 and check.max_levels <= 1 and len(check.reference_sha256) == 1
    assert check.within_contract
    assert np.array_equal(pixels, codec.decode(data))  # the check changes nothing of the decode itself
    # The reference is the float64 synthesis: the same model decoding in float64 (as on CUDA with TF32 on).
    codec.loaded.decode_precision, recorded = "float64", codec.loaded.decode_precision
    try:
        assert pixels_sha256(codec.decode(data)) == check.reference_sha256[0]
    finally:
        codec.loaded.decode_precision = recorded
    old = get_codec("learned", device="cpu", model="cp-extreme-s16-v2")
    with checked_against_reference() as check:
        old.decode(old.encode(img, 0.05).bitstream)
    assert check.decodes == 0 and not check.within_contract


def test_balanced_decode_grid_bounds_each_tile_and_covers_the_latent():
    from coldpress.codec.learned import balanced_grid

    for h, w in ((1, 500), (54, 72), (65, 64), (108, 144), (200, 300), (513, 97)):
        rows, cols = balanced_grid(h, w, 64, 7)
        assert rows[0] == 0 and rows[-1] == h and cols[0] == 0 and cols[-1] == w
        assert all(b > a for a, b in zip(rows, rows[1:])) and all(b > a for a, b in zip(cols, cols[1:]))
        for a, b in zip(rows, rows[1:]):
            for c, d in zip(cols, cols[1:]):
                assert (min(h, b + 7) - max(0, a - 7)) * (min(w, d + 7) - max(0, c - 7)) <= (64 + 14) ** 2
    assert balanced_grid(54, 72, 64, 7) == ([0, 54], [0, 72])  # 1152x864: one tile, no halo work
    assert len(balanced_grid(108, 144, 64, 7)[0]) == 3  # 2304x1728: 2 x 2, not 2 x 3 square tiles


def test_bitstream_from_another_model_is_refused(codec, photo):
    data = codec.encode(natural_image(64, 64, "RGB"), 0.5).bitstream
    b = container.unpack(data)
    forged = container.pack(container.Bitstream(**{**b.__dict__, "model_id": "someone-elses-model"}))
    with pytest.raises(ModelMismatchError, match="someone-elses-model"):
        codec.decode(forged)


def test_corrupted_payload_never_decodes_silently(codec):
    data = bytearray(codec.encode(natural_image(64, 64, "RGB"), 0.5).bitstream)
    data[len(data) // 2] ^= 0x10
    with pytest.raises(BitstreamError):
        codec.decode(bytes(data))


def test_context_parameters_do_not_depend_on_thread_count(codec, photo):
    if not codec.loaded.has_context:
        pytest.skip("the default model has no spatial context")
    y, z = codec._hyper(codec.analysis(photo, 8), 40)
    z_hat = codec.net.entropy_bottleneck.decompress(codec.net.entropy_bottleneck.compress(z), z.shape[-2:])
    means, scales = codec.loaded.hyper_parameters(z_hat)
    anchors_hat = torch.round(y - means) + means
    results = []
    for threads in (1, 2):
        with torch_threads(threads):
            results.append(codec.loaded.context_parameters(anchors_hat, means, scales))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_context_parameters_on_the_non_anchors_equal_the_full_convolution(codec, photo):
    """The context reads the anchors only (``checkerboard_conv``) and its parameters are computed on the
    non-anchors only: the values there must be the full fixed-point computation's, exactly (the goldens
    pin the bitstreams too)."""
    import torch.nn.functional as F

    from coldpress.codec.fixedpoint import _exact_conv, checkerboard_conv, checkerboard_kernel
    from coldpress.codec.networks import anchor_mask

    if not codec.loaded.has_context:
        pytest.skip("the default model has no spatial context")
    loaded = codec.loaded
    y, z = codec._hyper(codec.analysis(photo, 8), 40)
    z_hat = codec.net.entropy_bottleneck.decompress(codec.net.entropy_bottleneck.compress(z), z.shape[-2:])
    means, scales = loaded.hyper_parameters(z_hat)
    anchors_hat = torch.round(y - means) + means
    anchor = anchor_mask(*means.shape[-2:])
    ctx = loaded.ctx_fixed(anchors_hat.double() * anchor)
    d_means, d_scales = loaded.ep_fixed(torch.cat([means, scales, ctx], dim=1)).chunk(2, dim=1)
    c_means, c_scales = loaded.context_parameters(anchors_hat + 7.0 * ~anchor, means, scales)  # non-anchors unread
    assert torch.equal(c_means[..., ~anchor], (means + d_means)[..., ~anchor])
    assert torch.equal(c_scales[..., ~anchor], (scales + d_scales)[..., ~anchor])
    assert torch.equal(c_means[..., anchor], means[..., anchor])

    # And on random integers, odd and even sizes and 3x3, 5x5 and 7x7 kernels, against the whole
    # convolution of the anchors (what the non-anchors hold is never read).
    gen = torch.Generator().manual_seed(0)
    for h, w_, k in ((7, 9, 3), (7, 9, 5), (8, 6, 5), (9, 8, 7), (1, 1, 5)):
        x = torch.randint(-2**16, 2**16, (2, 5, h, w_), generator=gen).double()
        w = torch.randint(-2047, 2048, (4, 5, k, k), generator=gen).double()
        anchor = anchor_mask(h, w_)
        full = _exact_conv(x * anchor, w)
        got = checkerboard_conv(x, checkerboard_kernel(w), _exact_conv)
        assert torch.equal(got[..., ~anchor], full[..., ~anchor]) and not got[..., anchor].any()
        assert h * w_ == 1 or full[..., ~anchor].any()  # not vacuous
        approx = checkerboard_conv(x.float(), checkerboard_kernel(w.float()), lambda t, kk: F.conv2d(t, kk, padding=kk.shape[-1] // 2))
        assert torch.allclose(approx[..., ~anchor].double(), full[..., ~anchor], rtol=1e-4, atol=1e-3 * float(full.abs().max()))


def test_bitstreams_of_older_shipped_models_still_decode(photo):
    """Archives outlive the default model: a bitstream loads the shipped model that made it."""
    from coldpress.codec import decode_bitstream

    reg = registry()
    older = [m for m in reg["models"] if m != reg["default"]]
    if not older:
        pytest.skip("only one learned model is shipped")
    for model_id in older:
        old = get_codec("learned", model=model_id, device="cpu")
        data = old.encode(photo, 0.05).bitstream
        assert container.unpack(data).model_id == model_id
        assert np.array_equal(decode_bitstream(data, device="cpu"), old.decode(data))


def test_scale_search_keeps_the_better_reconstruction(codec):
    from coldpress.codec.learned import SCALE_SEARCH_MAX_Q16, SCALES_EIGHTHS

    img = natural_image(384, 512, "RGB", seed=12)  # its knob lands low at 0.04 bpp: the two scales are compared
    h, w = img.shape[:2]
    budget = int(0.04 * w * h / 8) - 40
    assert codec._scale_choice(6, w, h, budget) == "compare"  # 0.07 bpp at 6/8
    payload, params = codec._encode_rgb(img, budget)
    assert len(payload) <= budget
    fits = [(s, *codec._fit(img, s, budget)) for s in SCALES_EIGHTHS[:2]]
    assert all(p is not None for _, p, _ in fits) and fits[0][2] <= SCALE_SEARCH_MAX_Q16
    plain = get_codec("learned", device="cpu", scale_search=False)
    assert plain._encode_rgb(img, budget)[1] == {"q": fits[0][2], "s": 8}
    quality = {s: psnr(img, codec._reconstruct(p, {"q": q, "s": s}, w, h)) for s, p, q in fits}
    assert params in [{"q": q, "s": s} for s, _, q in fits]
    assert quality[params["s"]] >= max(quality.values()) - 0.05, (params, quality)


def test_scale_choice_follows_the_bits_per_pixel_a_scale_would_code_at():
    from coldpress.codec.learned import SCALE_LARGER_WINS_BPP, SCALE_SMALLER_WINS_BPP, LearnedCodec

    choice = LearnedCodec._scale_choice
    w, h = 768, 512  # 6/8: 576x384, 221184 pixels
    at = lambda bpp: int(bpp * 576 * 384 / 8)  # noqa: E731 - the budget that codes 6/8 at bpp
    assert choice(6, w, h, at(SCALE_SMALLER_WINS_BPP * 0.95)) == "smaller"
    assert choice(6, w, h, at((SCALE_SMALLER_WINS_BPP + SCALE_LARGER_WINS_BPP) / 2)) == "compare"
    assert choice(6, w, h, at(SCALE_LARGER_WINS_BPP * 1.05)) == "larger"
    assert choice(4, w, h, at(SCALE_SMALLER_WINS_BPP * 0.95)) == "larger"  # the same bytes on a quarter of the pixels


def test_a_scale_whose_smaller_one_clearly_wins_is_not_coded(photo, monkeypatch):
    """At the lowest rates the full size is passed over without a coding or a reconstruction: the
    encoder fits 6/8 first, and 4/8 would code at too many bits per pixel to be compared."""
    from coldpress.codec.learned import SCALE_LARGER_WINS_BPP, SCALE_SMALLER_WINS_BPP

    h, w = photo.shape[:2]
    codec = get_codec("learned", device="cpu")
    budget = int(SCALE_SMALLER_WINS_BPP * 0.9 * 288 * 192 / 8)  # 6/8 of 384x256 at 0.9 x the threshold
    assert codec._scale_choice(6, w, h, budget) == "smaller" and codec._scale_choice(4, w, h, budget) == "larger"
    assert 8 * budget / (192 * 128) > SCALE_LARGER_WINS_BPP
    fitted = []
    fit = codec._fit
    monkeypatch.setattr(codec, "_fit", lambda rgb, eighths, *a: fitted.append(eighths) or fit(rgb, eighths, *a))  # records
    syntheses = codec.syntheses
    payload, params = codec._encode_rgb(photo, budget)
    assert len(payload) <= budget
    assert params["s"] == 6 and fitted == [6]  # the only scale coded (it fits this photo and the synthetic one)
    assert codec.syntheses == syntheses  # and nothing was reconstructed


def test_codec_instances_of_one_model_share_one_coder_lock_and_code_concurrently():
    """compressai's coders belong to the cached model, shared by every codec instance of it: one lock
    per model (a lock per instance let two instances use the same coder at once)."""
    from concurrent.futures import ThreadPoolExecutor

    a = get_codec("learned", device="cpu")
    b = get_codec("learned", device="cpu", tile=512)
    assert a is not b and a.loaded is b.loaded
    assert a._lock is b._lock is a.loaded.coder_lock
    images = [natural_image(64, 96, "RGB", seed=40 + i) for i in range(4)]
    expected = [a.encode(img, 0.3).bitstream for img in images]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda iv: (a if iv[0] % 2 else b).encode(iv[1], 0.3).bitstream, enumerate(images)))
    assert got == expected


def test_concurrent_encodes_leave_later_decodes_unchanged(photo):
    """The fixed-point convolutions once switched oneDNN off process-wide for their duration: threads
    restoring the switch out of order left it off for good, and later float32 decodes moved by a level."""
    from concurrent.futures import ThreadPoolExecutor

    codec = get_codec("learned", device="cpu")
    data = codec.encode(photo, 0.05).bitstream
    codec.forget_decodes()
    before = codec.decode(data)
    images = [natural_image(64, 96, "RGB", seed=50 + i) for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda img: codec.encode(img, 0.3), images))
    assert torch.backends.mkldnn.enabled
    assert np.array_equal(codec.decode(data), before)


def test_without_scale_search_the_full_size_is_coded_first_even_where_a_smaller_scale_would_win(photo, monkeypatch):
    h, w = photo.shape[:2]
    codec = get_codec("learned", device="cpu", scale_search=False)
    budget = int(0.03 * w * h / 8) - 40
    assert codec._scale_choice(6, w, h, budget) == "smaller"
    fitted = []
    fit = codec._fit
    monkeypatch.setattr(codec, "_fit", lambda rgb, eighths, *a: fitted.append(eighths) or fit(rgb, eighths, *a))
    payload, params = codec._encode_rgb(photo, budget)
    assert fitted[0] == 8 and params["s"] == fitted[-1] and len(payload) <= budget


def test_a_budget_too_small_for_every_scale_says_so_after_scales_were_passed_over(photo):
    from coldpress.errors import RateUnreachableError

    h, w = photo.shape[:2]
    codec = get_codec("learned", device="cpu")
    assert codec._scale_choice(3, w, h, 20) == "smaller"  # 8/8 to 3/8 passed over: only 2/8 is tried
    with pytest.raises(RateUnreachableError, match=r"cannot fit this 384x256 image into 20 payload bytes .* raise --bpp"):
        codec._encode_rgb(photo, 20)


def test_effort_0_compares_scales_only_at_low_knobs_and_higher_efforts_whatever_the_knob():
    from coldpress.codec.learned import SCALE_SEARCH_MAX_Q16

    img = natural_image(384, 512, "RGB", seed=12)
    budget = int(0.05 * 384 * 512 / 8) - 40
    fast, thorough = get_codec("learned", device="cpu"), get_codec("learned", device="cpu", effort=1)
    assert fast._scale_choice(6, 512, 384, budget) == "compare"
    q_full = fast._fit(img, 8, budget)[1]
    assert q_full > SCALE_SEARCH_MAX_Q16  # this image's knob lands high at 8/8
    before = fast.syntheses, thorough.syntheses
    _, params = fast._search(img, budget)
    assert params == {"q": q_full, "s": 8} and fast.syntheses == before[0]  # no comparison at effort 0
    thorough._search(img, budget)  # rate control only (refinement follows it in _encode_rgb)
    assert thorough.syntheses == before[1] + 2  # both scales reconstructed and compared
