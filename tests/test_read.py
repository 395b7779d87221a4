"""transforms.read: every kind of input Pillow opens becomes L/LA/RGB/RGBA pixels; bad inputs are
rejected with a reason. All images are made here with Pillow."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile

from coldpress.errors import InputRejected
from coldpress.transforms.read import DEFAULT_MAX_PIXELS, decode_input
from synthetic_images import natural_image, psnr

SHARED_GEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geo"


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height RGB pixels (its pixel data is almost empty)."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


RGB = natural_image(24, 32, "RGB")
GRAY = natural_image(24, 32, "L")
LA = natural_image(24, 32, "LA")
RGBA = natural_image(24, 32, "RGBA")


# -- inputs that decode ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fmt, options, exact",
    [
        ("PNG", {}, True),
        ("TIFF", {}, True),
        ("BMP", {}, True),
        ("WEBP", {"lossless": True}, True),
        ("JPEG", {"quality": 95}, False),
        ("WEBP", {"quality": 90}, False),
    ],
)
def test_rgb_in_every_format(fmt, options, exact):
    data = encode(Image.fromarray(RGB), fmt, **options)
    d = decode_input(data, f"x.{fmt}")
    assert (d.mode, d.width, d.height, d.source_format, d.bit_depth) == ("RGB", 32, 24, fmt, 8)
    assert d.pixels.shape == (24, 32, 3) and d.pixels.dtype == np.uint8 and d.pixels.flags.c_contiguous
    with Image.open(io.BytesIO(data)) as reference:
        assert np.array_equal(d.pixels, np.asarray(reference))
    if exact:
        assert np.array_equal(d.pixels, RGB)
    else:
        assert psnr(d.pixels, RGB) > 20
    json.dumps(d.metadata, allow_nan=False)  # JSON-able


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
def test_rgba_alpha_is_preserved(fmt):
    options = {"lossless": True} if fmt == "WEBP" else {}
    d = decode_input(encode(Image.fromarray(RGBA), fmt, **options), "a")
    assert d.mode == "RGBA" and d.source_mode == "RGBA"
    if fmt == "WEBP":  # lossless WebP may change the colour of fully transparent pixels
        assert np.array_equal(d.pixels[..., 3], RGBA[..., 3])
        visible = RGBA[..., 3] > 0
        assert np.array_equal(d.pixels[visible], RGBA[visible])
    else:
        assert np.array_equal(d.pixels, RGBA)


@pytest.mark.parametrize("arr, mode", [(GRAY, "L"), (LA, "LA")])
def test_grayscale_and_gray_alpha(arr, mode):
    d = decode_input(encode(Image.fromarray(arr), "PNG"), "g.png")
    assert d.mode == mode and d.source_mode == mode
    assert np.array_equal(d.pixels, arr)


def test_palette_without_transparency_becomes_rgb():
    img = Image.fromarray(RGB).quantize(colors=16)
    assert img.mode == "P"
    d = decode_input(encode(img, "PNG"), "p.png")
    assert (d.mode, d.source_mode) == ("RGB", "P")
    assert np.array_equal(d.pixels, np.asarray(img.convert("RGB")))
    assert any("palette" in note for note in d.metadata["conversions"])


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_becomes_rgba(fmt):
    img = Image.fromarray(RGB).quantize(colors=16)
    indices = np.asarray(img)
    transparent = int(indices[0, 0])
    d = decode_input(encode(img, fmt, transparency=transparent), f"p.{fmt}")
    assert (d.mode, d.source_mode) == ("RGBA", "P")
    assert np.array_equal(d.pixels[..., 3] == 0, indices == transparent)
    opaque = indices != transparent
    assert np.array_equal(d.pixels[..., :3][opaque], np.asarray(img.convert("RGB"))[opaque])


def test_gray_with_transparent_colour_becomes_la():
    img = Image.fromarray(GRAY)
    value = int(GRAY[5, 5])
    d = decode_input(encode(img, "PNG", transparency=value), "t.png")
    assert d.mode == "LA"
    assert np.array_equal(d.pixels[..., 0], GRAY)
    assert np.array_equal(d.pixels[..., 1] == 0, GRAY == value)


def test_bilevel_becomes_l_with_0_and_255():
    bits = GRAY > 128
    img = Image.fromarray(bits)
    assert img.mode == "1"
    for fmt in ("PNG", "TIFF", "BMP"):
        d = decode_input(encode(img, fmt), f"b.{fmt}")
        assert (d.mode, d.source_mode, d.bit_depth) == ("L", "1", 1)
        assert np.array_equal(d.pixels, np.where(bits, 255, 0).astype(np.uint8))


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk_becomes_rgb(fmt):
    cmyk = Image.fromarray(RGB).convert("CMYK")
    data = encode(cmyk, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    d = decode_input(data, f"c.{fmt}")
    assert (d.mode, d.source_mode) == ("RGB", "CMYK")
    with Image.open(io.BytesIO(data)) as reopened:
        expected = np.asarray(reopened.convert("RGB"))
    assert np.array_equal(d.pixels, expected)
    if fmt == "TIFF":  # lossless: Pillow's CMYK round trip gives back the RGB image
        assert np.array_equal(d.pixels, RGB)


def _expected_8bit(values16: np.ndarray) -> np.ndarray:
    return np.round(values16.astype(np.float64) * 255 / 65535).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grayscale_is_scaled_to_8bit(fmt):
    values = (np.arange(24 * 32).reshape(24, 32) * 85).astype(np.uint16)  # 0 .. 65195
    values[0, 0], values[0, 1] = 0, 65535
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    d = decode_input(encode(img, fmt), f"w.{fmt}")
    assert d.mode == "L" and d.source_mode.startswith("I") and d.bit_depth in (16, 32)
    assert np.array_equal(d.pixels, _expected_8bit(values))
    assert d.pixels[0, 0] == 0 and d.pixels[0, 1] == 255
    assert any("scaled to 8-bit" in note and "0..65535" in note for note in d.metadata["conversions"])


def test_16bit_big_endian_tiff():
    values = (np.arange(24 * 32).reshape(24, 32) * 70).astype(np.uint16)
    img = Image.frombytes("I;16B", (32, 24), values.astype(">u2").tobytes())
    d = decode_input(encode(img, "TIFF"), "be.tif")
    assert d.mode == "L"
    assert np.array_equal(d.pixels, _expected_8bit(values))


def test_32bit_integer_within_16bit_range_is_scaled():
    values = (np.arange(24 * 32).reshape(24, 32) * 80).astype(np.int32)
    d = decode_input(encode(Image.fromarray(values), "TIFF"), "i32.tif")
    assert (d.mode, d.source_mode) == ("L", "I")
    assert np.array_equal(d.pixels, _expected_8bit(values))


def test_exif_orientation_6_is_applied_and_recorded():
    img = Image.fromarray(RGB)  # 32 wide, 24 high
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    exif[0x010F] = "ColdpressCam"  # Make
    d = decode_input(encode(img, "PNG", exif=exif), "o.png")
    assert (d.width, d.height) == (24, 32)
    assert np.array_equal(d.pixels, np.rot90(RGB, k=-1))
    assert d.metadata["exif_orientation"] == 6 and d.metadata["orientation_applied"] is True
    assert d.metadata["exif"]["Make"] == "ColdpressCam"


def test_jpeg_exif_comes_out_as_json():
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "ColdpressCam"
    exif[0x011A] = 72.0  # XResolution (a rational)
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"  # DateTimeOriginal, in the Exif IFD
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"  # GPSLatitudeRef
    gps[2] = (52.0, 31.0, 12.5)  # GPSLatitude
    d = decode_input(encode(Image.fromarray(RGB), "JPEG", exif=exif, quality=95), "e.jpg")
    assert (d.width, d.height) == (24, 32)
    meta = json.loads(json.dumps(d.metadata, allow_nan=False))
    assert meta["exif"]["Make"] == "ColdpressCam"
    assert meta["exif"]["Orientation"] == 6
    assert meta["exif"]["XResolution"] == pytest.approx(72.0)
    assert meta["exif"]["DateTimeOriginal"] == "2024:05:06 07:08:09"
    assert meta["exif"]["GPSInfo"]["GPSLatitudeRef"] == "N"
    assert meta["exif"]["GPSInfo"]["GPSLatitude"] == pytest.approx([52.0, 31.0, 12.5])
    assert any("orientation 6" in note for note in meta["conversions"])


def test_no_exif_orientation_leaves_pixels_alone():
    d = decode_input(encode(Image.fromarray(RGB), "PNG"), "n.png")
    assert d.metadata["exif_orientation"] is None and d.metadata["orientation_applied"] is False
    assert np.array_equal(d.pixels, RGB)


def test_icc_profile_is_recorded():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    d = decode_input(encode(Image.fromarray(RGB), "PNG", icc_profile=icc), "icc.png")
    assert d.metadata["icc_profile"]["bytes"] == len(icc)
    assert "sRGB" in d.metadata["icc_profile"]["description"]
    assert decode_input(encode(Image.fromarray(RGB), "PNG"), "none.png").metadata["icc_profile"] is None


def test_animated_gif_gives_first_frame():
    frames = [Image.fromarray(RGB).quantize(colors=8), Image.fromarray(255 - RGB).quantize(colors=8)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    d = decode_input(data, "anim.gif")
    assert d.metadata["frames"] == 2
    assert np.array_equal(d.pixels, np.asarray(frames[0].convert("RGB")))
    assert any("first of 2 frames" in note for note in d.metadata["conversions"])


def test_16bit_rgb_geotiff_from_shared_data():
    path = SHARED_GEO / "landsat8_rgb16.tif"
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (../shared/data is not checked out beside the repo)")
    d = decode_input(path.read_bytes(), str(path))
    assert d.mode == "RGB" and d.bit_depth == 16
    assert "GeoKeyDirectoryTag" in d.metadata["exif"]
    assert any("16-bit" in note for note in d.metadata["conversions"])


# -- inputs that are rejected ---------------------------------------------------------------------
def rejected(data: bytes, source: str = "src/bad.bin", **kw) -> str:
    with pytest.raises(InputRejected) as info:
        decode_input(data, source, **kw)
    message = str(info.value)
    assert message.startswith(source) and ";" in message  # names the file, then says what to do
    return message


def test_zero_bytes():
    assert "empty" in rejected(b"")


@pytest.mark.parametrize(
    "fmt, keep", [("PNG", 0.5), ("PNG", 0.8), ("JPEG", 0.5), ("JPEG", 0.95), ("TIFF", 0.6), ("WEBP", 0.7)]
)
def test_truncated(fmt, keep):
    data = encode(Image.fromarray(natural_image(48, 64, "RGB")), fmt)
    assert "truncated" in rejected(data[: int(len(data) * keep)])


def test_pillow_told_to_accept_truncated_files_stops_the_job_and_leaves_the_flag_alone(monkeypatch):
    """LOAD_TRUNCATED_IMAGES is process-wide: coldpress neither flips it (other threads read images
    too) nor archives what Pillow would pad; it stops with what to change, and rejects no input."""
    from coldpress.codec import get_codec
    from coldpress.errors import EnvironmentFault
    from coldpress.transforms.records import process_input

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = encode(Image.fromarray(natural_image(48, 64, "RGB")), "JPEG")
    with pytest.raises(EnvironmentFault, match="LOAD_TRUNCATED_IMAGES"):
        decode_input(data[: len(data) // 2], "half.jpg")
    with pytest.raises(EnvironmentFault, match="LOAD_TRUNCATED_IMAGES"):
        process_input("whole.jpg", "whole.jpg", data, get_codec("jpeg"), 1.0)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_random_bytes():
    assert "not an image" in rejected(np.random.default_rng(1).bytes(4096))


def test_text_file():
    assert "not an image" in rejected(b"id,name\n1,hello\n2,world\n" * 20, "notes.csv")


def test_decompression_bomb_header_rejected_before_decoding():
    message = rejected(png_claiming(100_000, 100_000), "bomb.png")
    assert "too large" in message


def test_max_pixels_checked_from_header_before_loading():
    # 25 megapixels claimed by a 70-byte file: rejected without allocating the pixels.
    message = rejected(png_claiming(5000, 5000), "big.png", max_pixels=1_000_000)
    assert "25,000,000 pixels" in message and "1,000,000" in message


def test_max_pixels_on_a_real_image():
    data = encode(Image.fromarray(RGB), "PNG")
    assert "above the limit of 700" in rejected(data, max_pixels=700)
    assert decode_input(data, "ok", max_pixels=768).width == 32
    assert DEFAULT_MAX_PIXELS >= 100_000_000


@pytest.mark.parametrize("width, height", [(0, 10), (12, 0)])
def test_zero_size_image(width, height):
    assert f"zero size ({width}x{height})" in rejected(png_claiming(width, height), "empty-size.png")


def test_float_tiff_is_unsupported():
    img = Image.fromarray(np.linspace(0, 1, 24 * 32, dtype=np.float32).reshape(24, 32))
    assert img.mode == "F"
    assert "mode F" in rejected(encode(img, "TIFF"), "float.tif")


def test_32bit_integer_outside_16bit_range_is_unsupported():
    values = np.full((24, 32), 70_000, np.int32)
    assert "outside the 16-bit range" in rejected(encode(Image.fromarray(values), "TIFF"), "i32.tif")


def test_corrupt_pixel_data():
    data = bytearray(encode(Image.fromarray(RGB), "PNG"))
    idat = data.find(b"IDAT")
    data[idat + 10 : idat + 40] = b"\xff" * 30  # breaks the zlib stream and the chunk CRC
    rejected(bytes(data), "corrupt.png")


def _gdal_rgba_tiff(band4: str) -> bytes:
    items = "".join(
        f'  <Item name="COLORINTERP" sample="{i}" role="colorinterp">{c}</Item>\n'
        for i, c in enumerate(["Red", "Green", "Blue", band4])
    )
    gdal = f"<GDALMetadata>\n{items}</GDALMetadata>\n"
    return encode(Image.fromarray(RGBA), "TIFF", tiffinfo={42112: gdal})


def test_geotiff_fourth_band_that_is_not_alpha_is_dropped():
    d = decode_input(_gdal_rgba_tiff("Undefined"), "rgbn.tif")
    assert (d.mode, d.source_mode) == ("RGB", "RGBA")
    assert np.array_equal(d.pixels, RGBA[..., :3])
    assert any("4th band is not alpha" in note for note in d.metadata["conversions"])
    d = decode_input(_gdal_rgba_tiff("Alpha"), "rgba.tif")
    assert d.mode == "RGBA" and np.array_equal(d.pixels, RGBA)


def test_naip_rgbn_from_shared_data():
    path = SHARED_GEO / "m_4709963_se_14_1_20090818.tif"
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (../shared/data is not checked out beside the repo)")
    d = decode_input(path.read_bytes(), str(path))
    assert d.mode == "RGB" and (d.width, d.height) == (934, 724)
    with Image.open(path) as img:
        assert np.array_equal(d.pixels, np.asarray(img)[..., :3])
