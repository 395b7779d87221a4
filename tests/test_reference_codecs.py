"""Reference codecs (Pillow JPEG, WebP, AVIF at full, half and quarter scale): rate, modes, quality."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coldpress.codec import container
from coldpress.codec.container import Bitstream
from coldpress.codec.registry import codec_names, get_codec
from coldpress.errors import BitstreamError, InputRejected, RateUnreachableError
from synthetic_images import natural_image, psnr

REFERENCE = ["jpeg", "webp", "avif", "avif-half", "avif-quarter"]
# PSNR floors (dB) at 2 bpp on the 128x96 synthetic image; measured 29-30 / 27 / 23.7.
PSNR_FLOOR = {"jpeg": 27.0, "webp": 27.0, "avif": 27.0, "avif-half": 25.0, "avif-quarter": 22.0}
KODAK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eval" / "kodak"


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return natural_image(96, 128, "RGB")


def test_reference_codecs_are_registered_under_their_names():
    assert set(REFERENCE) <= set(codec_names())
    for name in REFERENCE:
        codec = get_codec(name)
        assert codec.name == name
        assert codec is get_codec(name)
        d = codec.describe()
        assert d["codec"] == name and d["model_id"] == "" and d["weights_hash"] == ""
    assert get_codec("avif-half").describe()["scale"] == 2
    assert get_codec("avif-quarter").describe()["scale"] == 4


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("name", REFERENCE)
def test_round_trip_keeps_shape_mode_alpha_and_rate(name, mode):
    image = natural_image(96, 128, mode, seed=1)
    codec = get_codec(name)
    bpp = 4.0  # the alpha plane alone costs ~1.2 bpp; the rest leaves >2 bpp for colour
    result = codec.encode(image, bpp)
    assert result.achieved_bpp <= bpp
    assert result.achieved_bpp == 8 * len(result.bitstream) / (128 * 96)
    assert (result.width, result.height, result.target_bpp) == (128, 96, bpp)
    b = container.unpack(result.bitstream)
    assert (b.codec, b.mode, b.width, b.height) == (name, mode, 128, 96)
    assert b.params == result.params
    assert set(b.params) == ({"q"} if name in ("jpeg", "webp", "avif") else {"q", "s"})

    decoded = codec.decode(result.bitstream)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    if mode in ("LA", "RGBA"):
        assert b.alpha, "a non-opaque alpha plane must be stored"
        np.testing.assert_array_equal(decoded[:, :, -1], image[:, :, -1])
        colour, original = decoded[:, :, :-1], image[:, :, :-1]
    else:
        assert not b.alpha
        colour, original = decoded, image
    assert psnr(colour, original) > PSNR_FLOOR[name] - 1.0


@pytest.mark.parametrize("name", REFERENCE)
def test_opaque_alpha_is_dropped_and_restored(name, rgb):
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    codec = get_codec(name)
    with_alpha = codec.encode(rgba, 2.0)
    assert not container.unpack(with_alpha.bitstream).alpha
    decoded = codec.decode(with_alpha.bitstream)
    assert decoded.shape == rgba.shape
    assert np.all(decoded[:, :, 3] == 255)
    # Same colour payload as the RGB image: only the mode byte differs.
    assert len(with_alpha.bitstream) == len(codec.encode(rgb, 2.0).bitstream)


@pytest.mark.parametrize("name", REFERENCE)
def test_psnr_floor_and_more_bits_never_hurt(name, rgb):
    codec = get_codec(name)
    low = codec.encode(rgb, 0.6)
    high = codec.encode(rgb, 2.0)
    assert low.achieved_bpp <= 0.6 and high.achieved_bpp <= 2.0
    assert high.params["q"] >= low.params["q"]
    p_low = psnr(codec.decode(low.bitstream), rgb)
    p_high = psnr(codec.decode(high.bitstream), rgb)
    assert p_high >= PSNR_FLOOR[name]
    assert p_high >= p_low


@pytest.mark.parametrize("name", REFERENCE)
@pytest.mark.parametrize("budget", [300, 700, 1500, 3000])
def test_rate_control_picks_the_highest_quality_that_fits(name, budget, rgb):
    codec = get_codec(name)
    try:
        payload, params = codec._encode_rgb(rgb, budget)
    except RateUnreachableError:
        assert len(codec.payload_at_quality(rgb, codec.quality_range[0])) > budget
        return
    q = params["q"]
    assert len(payload) <= budget
    assert payload == codec.payload_at_quality(rgb, q)
    if q < codec.quality_range[1]:
        assert len(codec.payload_at_quality(rgb, q + 1)) > budget


@pytest.mark.parametrize("name", REFERENCE)
def test_absurdly_low_bpp_is_refused_with_advice(name, rgb):
    with pytest.raises(RateUnreachableError, match="raise --bpp"):
        get_codec(name).encode(rgb, 0.001)


@pytest.mark.parametrize("name", REFERENCE)
def test_unreachable_rate_names_the_rate_needed_and_it_is_right(name, rgb):
    codec = get_codec(name)
    # 0.1 bpp on 128x96 is 153 bytes: the header fits, no format's lowest quality does.
    with pytest.raises(RateUnreachableError) as info:
        codec.encode(rgb, 0.1)
    message = str(info.value)
    assert message.startswith(f"{name} cannot reach 0.1 bpp on this 128x96 image")
    assert "raise --bpp" in message
    if name in ("avif", "avif-half"):
        assert "avif-quarter" in message
    if name in ("jpeg", "webp"):
        assert "avif-half" in message
    needed = float(re.search(r"lowest quality needs ([0-9.]+) bpp", message).group(1))
    assert needed > 0.1
    # The rate it names (rounded up to 0.001) is enough, and a little less is not.
    assert codec.encode(rgb, needed).achieved_bpp <= needed
    with pytest.raises(RateUnreachableError):
        codec.encode(rgb, needed - 0.002)


@pytest.mark.parametrize("name", REFERENCE)
def test_encoding_is_deterministic(name, rgb):
    codec = get_codec(name)
    first = codec.encode(rgb, 0.8).bitstream
    again = codec.encode(rgb.copy(), 0.8).bitstream
    assert first == again


@pytest.mark.parametrize("name", REFERENCE)
@pytest.mark.parametrize("size", [(61, 97), (2, 3), (1, 1)])
def test_odd_and_tiny_sizes_round_trip(name, size):
    image = natural_image(*size, "RGB", seed=2)
    codec = get_codec(name)
    # Huge bpp for tiny images: the fixed format overhead (~300 bytes for AVIF) must fit.
    result = codec.encode(image, 8 * 2000 / (size[0] * size[1]))
    decoded = codec.decode(result.bitstream)
    assert decoded.shape == image.shape


def test_grayscale_is_coded_as_one_channel_where_the_format_allows():
    gray = natural_image(96, 128, "L")
    jpeg = get_codec("jpeg")
    payload = container.unpack(jpeg.encode(gray, 1.0).bitstream).payload
    assert Image.open(io.BytesIO(payload)).mode == "L"
    # One channel leaves the chroma bits to luma: better than coding the same gray as colour.
    as_rgb = np.repeat(gray[:, :, None], 3, axis=2)
    as_rgb[0, 0, 0] ^= 1  # no longer exactly gray, so coded as colour
    for name in ("jpeg", "avif"):
        codec = get_codec(name)
        p_gray = psnr(codec.decode(codec.encode(gray, 0.8).bitstream), gray)
        p_rgb = psnr(codec.decode(codec.encode(as_rgb, 0.8).bitstream).mean(axis=2).round().astype(np.uint8), gray)
        assert p_gray > p_rgb


def test_webp_refuses_images_beyond_its_size_limit():
    wide = np.zeros((2, 16400, 3), np.uint8)
    with pytest.raises(InputRejected, match="limit is 16383.*use avif"):
        get_codec("webp").encode(wide, 50.0)


# -- payloads that pass the checksum but are wrong (a faulty writer) -------------------------------


def _container(name: str, payload: bytes, params: dict, width: int = 128, height: int = 96) -> bytes:
    return container.pack(
        Bitstream(codec=name, width=width, height=height, mode="RGB", payload=payload, params=params)
    )


@pytest.mark.parametrize("name", REFERENCE)
def test_undecodable_payload_raises_bitstream_error(name):
    codec = get_codec(name)
    params = codec._params_probe()
    garbage = np.random.default_rng(0).bytes(500)
    with pytest.raises(BitstreamError, match="does not decode"):
        codec.decode(_container(name, garbage, params))
    good = container.unpack(codec.encode(natural_image(96, 128), 1.0).bitstream).payload
    with pytest.raises(BitstreamError, match="does not decode"):
        codec.decode(_container(name, good[: len(good) // 2], params))


@pytest.mark.parametrize("name", REFERENCE)
def test_payload_of_the_wrong_size_raises_bitstream_error(name):
    codec = get_codec(name)
    small = codec.encode(natural_image(48, 64), 4.0)
    b = container.unpack(small.bitstream)
    with pytest.raises(BitstreamError, match="needs"):
        codec.decode(_container(name, b.payload, b.params, width=128, height=96))


def test_payload_of_another_format_raises_bitstream_error():
    jpeg_payload = container.unpack(get_codec("jpeg").encode(natural_image(), 1.0).bitstream).payload
    with pytest.raises(BitstreamError, match="does not decode as AVIF"):
        get_codec("avif").decode(_container("avif", jpeg_payload, {"q": 50}))


def test_wrong_scale_param_raises_bitstream_error():
    half = get_codec("avif-half").encode(natural_image(), 1.0)
    b = container.unpack(half.bitstream)
    with pytest.raises(BitstreamError, match="scale 4"):
        get_codec("avif-half").decode(_container("avif-half", b.payload, {**b.params, "s": 4}))


# -- Kodak -------------------------------------------------------------------------------------------


def test_kodak_avif_reaches_its_extreme_targets():
    path = KODAK / "kodim23.png"
    if not path.exists():
        pytest.skip(f"{path} is absent (shared evaluation data not mounted)")
    image = np.asarray(Image.open(path).convert("RGB"))
    avif = get_codec("avif").encode(image, 0.1)
    assert avif.achieved_bpp <= 0.1
    half = get_codec("avif-half").encode(image, 0.03)
    assert half.achieved_bpp <= 0.03
    decoded = get_codec("avif-half").decode(half.bitstream)
    assert decoded.shape == image.shape
    assert psnr(decoded, image) > 22.0


# -- the strong anchors: avif-best and jpeg2000 -----------------------------------------------------
@pytest.mark.parametrize("name, mode", [("avif-best", "L"), ("avif-best", "RGBA"), ("jpeg2000", "L"),
                                        ("jpeg2000", "RGB"), ("jpeg2000", "RGBA")])
def test_strong_anchors_round_trip_within_the_budget_deterministically(name, mode):
    image = natural_image(96, 128, mode, seed=2)
    codec = get_codec(name)
    bpp = 1.8 if mode == "RGBA" else 0.5
    result = codec.encode(image, bpp)
    assert result.achieved_bpp <= bpp
    assert codec.encode(image, bpp).bitstream == result.bitstream
    decoded = codec.decode(result.bitstream)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    colour = slice(0, 3) if mode == "RGBA" else slice(None)
    assert psnr(decoded[..., colour], image[..., colour]) > 22.0
    assert set(container.unpack(result.bitstream).params) == ({"q", "f"} if name == "avif-best" else {"r"})


def test_avif_best_keeps_the_scale_that_reconstructs_best(rgb):
    """Every factor is fitted to the budget; the one kept has the highest PSNR (the search stops once
    the quality falls, which must not cost the best one)."""
    from coldpress.metrics import psnr as coldpress_psnr

    codec = get_codec("avif-best")
    budget = 400
    payload, params = codec._encode_rgb(rgb, budget)
    assert len(payload) <= budget
    scores = {}
    for factor in codec.factors:
        fit, _ = codec._fit(rgb, factor, budget)
        if fit is not None:
            scores[tuple(fit[1]["f"])] = coldpress_psnr(rgb, codec._decode_rgb(fit[0], fit[1], 128, 96))
    assert len(scores) >= 3
    assert scores[tuple(params["f"])] == max(scores.values())
    assert container.unpack(codec.encode(rgb, 0.3).bitstream).params["f"] != [1, 1]  # low rates downscale


def test_jpeg2000_rate_control_fills_the_budget(rgb):
    codec = get_codec("jpeg2000")
    for budget in (300, 1000, 3000):
        payload, params = codec._encode_rgb(rgb, budget)
        assert len(payload) <= budget
        image, _ = codec._prepare(rgb)
        assert len(codec._save_j2k(image, params["r"] * 0.85)) > budget  # a clearly lower ratio overflows


@pytest.mark.parametrize("name, params", [("avif-best", {"q": 10, "f": [3, 7]}), ("jpeg2000", None)])
def test_strong_anchors_refuse_damaged_bitstreams(name, params, rgb):
    codec = get_codec(name)
    b = container.unpack(codec.encode(rgb, 0.4).bitstream)
    if params is not None:
        forged = container.pack(container.Bitstream(**{**b.__dict__, "params": params}))
    else:
        forged = container.pack(container.Bitstream(**{**b.__dict__, "payload": b.payload[: len(b.payload) // 2]}))
    with pytest.raises(BitstreamError):
        codec.decode(forged)


@pytest.mark.parametrize("name", ["avif-best", "jpeg2000"])
def test_strong_anchors_say_when_a_rate_is_unreachable(name, rgb):
    with pytest.raises(RateUnreachableError, match="raise --bpp"):
        get_codec(name).encode(rgb, 0.05)
