"""transforms.records and transforms.sources: rows out of source bytes, pixels and files out of rows,
source listing, ids and safe restore names.

The codec used here is a small real one defined below (a downsampled PNG in the container), so the
transforms are tested without depending on the reference or learned codecs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from datetime import timezone
from importlib import metadata as importlib_metadata
from pathlib import Path, PurePosixPath, PureWindowsPath

import fsspec
import numpy as np
import pytest
from PIL import Image

from coldpress.codec import Codec, register
from coldpress.errors import BitstreamError, InputRejected, RateUnreachableError
from coldpress.transforms import records
from coldpress.transforms.records import (
    decode_record,
    encode_record,
    pixels_sha256,
    process_input,
    restored_name,
    restored_names,
    write_image,
)
from coldpress.transforms.sources import (
    SourceNotFound,
    filesystem_for,
    list_sources,
    read_bytes,
    record_id,
)
from synthetic_images import natural_image, psnr

ROW_FIELDS = {
    "id", "source_uri", "source_bytes", "source_sha256", "width", "height", "mode", "source_format",
    "source_mode", "codec", "model_id", "weights_hash", "target_bpp", "achieved_bpp", "bitstream",
    "bitstream_sha256", "recon_sha256", "psnr", "metadata", "coldpress_version", "codec_version",
    "torch_version", "device_class", "created_at",
}
REJECTED_FIELDS = {"id", "source_uri", "reason", "created_at"}


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@register("test-downsampled-png")
class DownsampledPngCodec(Codec):
    """A real if crude codec: the largest power-of-two downsampling whose PNG fits the budget."""

    name = "test-downsampled-png"

    def _encode_rgb(self, rgb, max_payload_bytes):
        h, w = rgb.shape[:2]
        factor = 1
        while factor <= max(h, w):
            small = Image.fromarray(rgb).resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.BOX)
            payload = _png(np.asarray(small))
            if len(payload) <= max_payload_bytes:
                return payload, {"factor": factor}
            factor *= 2
        raise RateUnreachableError(f"{self.name} cannot fit a {w}x{h} image in {max_payload_bytes} bytes; raise --bpp")

    def _decode_rgb(self, payload, params, width, height):
        with Image.open(io.BytesIO(payload)) as img:
            return np.asarray(img.convert("RGB").resize((width, height), Image.Resampling.BILINEAR))


class UndecodableCodec(DownsampledPngCodec):
    """Writes bitstreams its decoder cannot read back (a codec fault verify-on-write must catch)."""

    name = "test-undecodable"

    def _decode_rgb(self, payload, params, width, height):
        return np.zeros((height + 1, width, 3), np.uint8)


class CroppingCodec(DownsampledPngCodec):
    """Decodes to the wrong size."""

    name = "test-cropping"

    def decode(self, data):
        return super().decode(data)[1:]


class CrashingCodec(DownsampledPngCodec):
    """Fails with an error coldpress does not expect."""

    name = "test-crashing"

    def _encode_rgb(self, rgb, max_payload_bytes):
        raise ZeroDivisionError("division by zero inside the model")


CODEC = DownsampledPngCodec()
BPP = 2.0


def encoded(arr: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **options)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


# -- encode_record ----------------------------------------------------------------------------------
def test_encode_record_fields():
    image = natural_image(48, 64, "RGB")
    data = encoded(image)
    row = encode_record("./photos//a.png", "/data/photos/a.png", data, CODEC, BPP)
    assert set(row) == ROW_FIELDS
    assert row["id"] == "photos/a.png"
    assert row["source_uri"] == "/data/photos/a.png"
    assert row["source_bytes"] == len(data)
    assert row["source_sha256"] == hashlib.sha256(data).hexdigest()
    assert (row["width"], row["height"], row["mode"]) == (64, 48, "RGB")
    assert (row["source_format"], row["source_mode"]) == ("PNG", "RGB")
    assert (row["codec"], row["model_id"], row["weights_hash"]) == ("test-downsampled-png", "", "")
    assert row["target_bpp"] == BPP
    assert row["achieved_bpp"] == pytest.approx(8 * len(row["bitstream"]) / (64 * 48))
    assert 0 < row["achieved_bpp"] <= BPP
    assert row["bitstream_sha256"] == hashlib.sha256(row["bitstream"]).hexdigest()
    recon = CODEC.decode(row["bitstream"])
    assert row["recon_sha256"] == pixels_sha256(recon) == hashlib.sha256(recon.tobytes()).hexdigest()
    assert row["psnr"] == pytest.approx(psnr(image, recon))
    assert 10 < row["psnr"] < 99
    meta = json.loads(row["metadata"])
    assert meta["source_format"] == "PNG" and meta["codec_params"]["factor"] >= 1
    assert row["coldpress_version"]
    assert row["codec_version"].startswith("pillow-")
    try:
        torch_version = importlib_metadata.version("torch")
    except importlib_metadata.PackageNotFoundError:
        torch_version = ""
    assert row["torch_version"] == torch_version
    assert row["device_class"] == "cpu"
    assert row["created_at"].tzinfo is not None and row["created_at"].utcoffset().total_seconds() == 0


def test_rows_fit_the_archive_schema():
    schema = pytest.importorskip("coldpress.transforms.schema")
    rows = [
        encode_record(f"img{i}.png", f"/src/img{i}.png", encoded(natural_image(24, 32, mode, seed=i)), CODEC, 8.0)
        for i, mode in enumerate(["L", "LA", "RGB", "RGBA"])
    ]
    assert set(schema.ARCHIVE_SCHEMA.names) == ROW_FIELDS
    table = schema.rows_to_table(rows)
    assert table.num_rows == 4 and table.column("mode").to_pylist() == ["L", "LA", "RGB", "RGBA"]
    _, rejected = process_input("bad.png", "/src/bad.png", b"", CODEC, BPP)
    assert set(schema.REJECTED_SCHEMA.names) == REJECTED_FIELDS
    assert schema.rejected_to_table([rejected]).num_rows == 1


def test_exact_reconstruction_reports_psnr_cap():
    flat = np.full((24, 32, 3), (40, 120, 200), np.uint8)  # its PNG fits at full resolution
    row = encode_record("flat.png", "flat.png", encoded(flat), CODEC, 8.0)
    assert json.loads(row["metadata"])["codec_params"]["factor"] == 1
    assert row["psnr"] == records.PSNR_CAP == 99.0
    assert np.array_equal(decode_record(row), flat)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_decode_record_round_trip(mode):
    image = natural_image(24, 32, mode)
    row = encode_record(f"m/{mode}.png", f"m/{mode}.png", encoded(image), CODEC, 8.0)  # room for the alpha plane
    pixels = decode_record(row)
    assert pixels.shape == image.shape and pixels.dtype == np.uint8
    assert pixels_sha256(pixels) == row["recon_sha256"]
    if mode in ("LA", "RGBA"):  # alpha is stored losslessly
        assert np.array_equal(pixels[..., -1], image[..., -1])


def test_decode_record_from_a_parquet_like_row():
    row = encode_record("a.png", "a.png", encoded(natural_image(24, 32)), CODEC, BPP)
    as_read = {**row, "bitstream": memoryview(row["bitstream"])}  # any bytes-like value
    assert np.array_equal(decode_record(as_read), decode_record(row))


def test_decode_record_refuses_a_corrupt_bitstream():
    row = encode_record("dir/a.png", "dir/a.png", encoded(natural_image(24, 32)), CODEC, BPP)
    damaged = bytearray(row["bitstream"])
    damaged[len(damaged) // 2] ^= 0x01
    with pytest.raises(BitstreamError, match=r"'dir/a.png' is corrupt.*replica"):
        decode_record({**row, "bitstream": bytes(damaged)})
    with pytest.raises(BitstreamError, match="corrupt"):
        decode_record({**row, "bitstream_sha256": "0" * 64})
    with pytest.raises(BitstreamError, match="no bitstream"):
        decode_record({**row, "bitstream": None})
    with pytest.raises(BitstreamError, match="33x24"):
        decode_record({**row, "width": 33})


def test_orientation_is_applied_before_coding():
    image = natural_image(24, 32, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    row = encode_record("o.jpg", "o.jpg", encoded(image, "JPEG", exif=exif, quality=95), CODEC, BPP)
    assert (row["width"], row["height"]) == (24, 32)
    assert decode_record(row).shape == (32, 24, 3)
    assert json.loads(row["metadata"])["exif"]["Orientation"] == 6


# -- process_input never raises for bad input -------------------------------------------------------
def _complex_tiff() -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((8, 8), np.complex64))
    return buf.getvalue()


def _truncated(fmt: str) -> bytes:
    data = encoded(natural_image(48, 64), fmt)
    return data[: len(data) // 2]


BAD_INPUTS = {
    "empty": (b"", "empty"),
    "truncated-png": (_truncated("PNG"), "truncated"),
    "truncated-jpeg": (_truncated("JPEG"), "truncated"),
    "random": (np.random.default_rng(3).bytes(2048), "not an image"),
    "text": (b"hello, this is a text file\n" * 10, "not an image"),
    "bomb": (png_claiming(100_000, 100_000), "too large"),
    "complex": (_complex_tiff(), "complex64"),  # float TIFFs are archived as rasters (tests/test_raster.py)
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_inputs_are_rejected_with_a_reason(name):
    data, expected = BAD_INPUTS[name]
    status, row = process_input(f"in/{name}.png", f"/src/in/{name}.png", data, CODEC, BPP)
    assert status == "rejected"
    assert set(row) == REJECTED_FIELDS
    assert row["id"] == f"in/{name}.png" and row["source_uri"] == f"/src/in/{name}.png"
    assert row["reason"].startswith("InputRejected: ") and expected in row["reason"]
    assert f"/src/in/{name}.png" in row["reason"]
    assert row["created_at"].tzinfo is not None


def test_read_error_in_place_of_data():
    status, row = process_input("gone.png", "s3://bucket/gone.png", FileNotFoundError("no such key"), CODEC, BPP)
    assert status == "rejected"
    for part in ("ReadError", "FileNotFoundError", "no such key", "s3://bucket/gone.png"):
        assert part in row["reason"]


def test_unreachable_rate_is_rejected():
    status, row = process_input("a.png", "a.png", encoded(natural_image(24, 32)), CODEC, 0.01)
    assert status == "rejected" and row["reason"].startswith("RateUnreachableError: ")
    assert "raise --bpp" in row["reason"]
    with pytest.raises(RateUnreachableError):
        encode_record("a.png", "a.png", encoded(natural_image(24, 32)), CODEC, 0.01)


@pytest.mark.parametrize("codec", [UndecodableCodec(), CroppingCodec()], ids=lambda c: c.name)
def test_verify_on_write_catches_codec_faults(codec):
    data = encoded(natural_image(24, 32))
    with pytest.raises(InputRejected, match="verify-on-write failed"):
        encode_record("a.png", "a.png", data, codec, BPP)
    status, row = process_input("a.png", "a.png", data, codec, BPP)
    assert status == "rejected" and "verify-on-write failed" in row["reason"]


def test_unexpected_errors_are_rejected_not_raised():
    status, row = process_input("a.png", "a.png", encoded(natural_image(24, 32)), CrashingCodec(), BPP)
    assert status == "rejected"
    assert row["reason"].startswith("ZeroDivisionError: ") and "unexpected" in row["reason"]


def test_key_escaping_src_is_rejected_with_its_raw_key():
    status, row = process_input("../outside.png", "/x/outside.png", encoded(natural_image(24, 32)), CODEC, BPP)
    assert status == "rejected" and row["id"] == "../outside.png" and "'..'" in row["reason"]


def test_bad_bpp_is_a_job_error():
    with pytest.raises(ValueError, match="bpp"):
        process_input("a.png", "a.png", encoded(natural_image(24, 32)), CODEC, 0)


def test_good_input_is_archived():
    status, row = process_input("a.png", "a.png", encoded(natural_image(24, 32)), CODEC, BPP)
    assert status == "archived" and set(row) == ROW_FIELDS


# -- restored names ---------------------------------------------------------------------------------
NASTY_IDS = [
    "../../etc/passwd",
    "/abs/x.png",
    "a/../../b",
    "C:\\x",
    "C:/Windows/system32/x.png",
    "\\\\server\\share\\x.png",
    "..",
    ".",
    "",
    "/",
    "a/./b/../../../c.png",
    "nul\x00byte.png",
    "con.png",
    "sub/aux",
    "x:stream.png",
    "\u202egnp.exe",  # right-to-left override
    "e\u0301t\u00e9/\u5199\u771f.jpg",  # combining accent, CJK
    "line\nbreak\r.png",
    "   ../  ",
    "...",
    "a" * 400 + ".png",
    "dir/.hidden",
    "~/x.png",
]


@pytest.mark.parametrize("rid", NASTY_IDS, ids=range(len(NASTY_IDS)))
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_restored_name_stays_inside(tmp_path, rid, fmt):
    name = restored_name(rid, fmt)
    assert name and not name.startswith(("/", "\\")) and "\\" not in name and ":" not in name
    assert "\x00" not in name and all(ch.isprintable() for ch in name)
    assert not PureWindowsPath(name).drive and not PureWindowsPath(name).anchor
    parts = PurePosixPath(name).parts
    assert not any(part in ("", ".", "..") for part in parts)
    assert all(len(part.encode()) <= 255 for part in parts)
    assert name.endswith(".png" if fmt == "png" else ".jpg")
    dst = tmp_path / "out"
    target = dst / name
    assert os.path.realpath(target).startswith(os.path.realpath(dst) + os.sep)
    write_image(natural_image(4, 4), str(target), fmt)  # the name is usable on this system
    assert target.is_file() and os.path.realpath(target).startswith(os.path.realpath(dst) + os.sep)


def test_restored_name_keeps_folders_and_replaces_the_extension():
    assert restored_name("a/b/c.jpg") == "a/b/c.png"
    assert restored_name("a/b/c.jpg", "jpeg") == "a/b/c.jpg"
    assert restored_name("scan.tiff", "tiff") == "scan.tif"
    assert restored_name("archive.tar.gz") == "archive.tar.png"
    assert restored_name("photo") == "photo.png"
    assert restored_name("caf\u00e9/\u5199\u771f.JPG") == "caf\u00e9/\u5199\u771f.png"
    assert restored_name("con.png") == "_con.png"
    with pytest.raises(ValueError, match="output format"):
        restored_name("a.png", "gif87")


def test_restored_names_resolve_collisions():
    names = restored_names(["a.jpg", "a.png", "b.png", "x:y.png", "x_y.png"])
    assert len(set(names.values())) == 5
    assert names["b.png"] == "b.png"
    assert all(name.endswith(".png") for name in names.values())


# -- write_image ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_write_image_round_trip_and_leaves_no_temp_files(tmp_path, mode):
    image = natural_image(24, 32, mode)
    target = tmp_path / "deep" / "er" / "x.png"
    size = write_image(image, str(target))
    assert target.stat().st_size == size
    with Image.open(target) as img:
        assert img.mode == mode and np.array_equal(np.asarray(img), image)
    write_image(255 - image, str(target))  # overwrite in place
    with Image.open(target) as img:
        assert np.array_equal(np.asarray(img), 255 - image)
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.png"]


def test_write_image_formats(tmp_path):
    rgba = natural_image(24, 32, "RGBA")
    cases = [("jpeg", "JPEG", "RGB"), ("webp", "WEBP", "RGBA"), ("tiff", "TIFF", "RGBA"), ("bmp", "BMP", "RGB")]
    for fmt, pil_format, mode in cases:
        target = tmp_path / restored_name("img.png", fmt)
        write_image(rgba, str(target), fmt)
        with Image.open(target) as img:
            assert (img.format, img.mode, img.size) == (pil_format, mode, (32, 24))


def test_write_image_to_fsspec_urls(tmp_path):
    image = natural_image(24, 32, "RGB")
    url = "memory://coldpress-test-restore/sub/x.png"
    write_image(image, url)
    with Image.open(io.BytesIO(read_bytes(url))) as img:
        assert np.array_equal(np.asarray(img), image)
    file_url = (tmp_path / "f" / "y.png").as_uri()
    write_image(image, file_url)
    with Image.open(tmp_path / "f" / "y.png") as img:
        assert np.array_equal(np.asarray(img), image)


# -- sources ----------------------------------------------------------------------------------------
def _tree(root: Path) -> dict[str, bytes]:
    files = {
        "b.png": encoded(natural_image(8, 8)),
        "a/z.jpg": encoded(natural_image(8, 8), "JPEG"),
        "a/b/c.tif": encoded(natural_image(8, 8), "TIFF"),
        "notes.txt": b"not an image",
        "empty.png": b"",
        "sp ace/\u5199\u771f.png": encoded(natural_image(8, 8)),
    }
    hidden = {".hidden.png": b"x", ".git/config": b"x", "a/.cache/thumb.png": b"x", "a/.DS_Store": b"x"}
    for rel, data in {**files, **hidden}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_list_sources_local_tree(tmp_path):
    files = _tree(tmp_path / "src")
    pairs = list_sources(str(tmp_path / "src"))
    keys = [key for _, key in pairs]
    assert keys == sorted(files)  # hidden skipped, non-images kept, sorted, relative, forward slashes
    for uri, key in pairs:
        assert os.path.isabs(uri) and Path(uri) == tmp_path / "src" / key
        assert read_bytes(uri) == files[key]
        assert record_id(key) == key
    assert list_sources(str(tmp_path / "src") + "/") == pairs
    assert [key for _, key in list_sources((tmp_path / "src").as_uri())] == keys
    assert list_sources(str(tmp_path / "src" / "a" / "z.jpg")) == [(str(tmp_path / "src" / "a" / "z.jpg"), "z.jpg")]


def test_list_sources_on_an_fsspec_filesystem():
    fs = fsspec.filesystem("memory")
    root = "/coldpress-test-sources"
    if fs.exists(root):
        fs.rm(root, recursive=True)
    fs.pipe({
        f"{root}/x/1.png": b"1", f"{root}/2.png": b"2", f"{root}/.hidden/3.png": b"3", f"{root}-other/4.png": b"4",
    })
    pairs = list_sources(f"memory://{root}")
    assert [key for _, key in pairs] == ["2.png", "x/1.png"]
    assert [read_bytes(uri) for uri, _ in pairs] == [b"2", b"1"]
    assert all(uri.startswith("memory://") for uri, _ in pairs)


def test_list_sources_missing(tmp_path):
    with pytest.raises(SourceNotFound, match="does not exist"):
        list_sources(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        list_sources(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    assert list_sources(str(tmp_path / "empty")) == []


def test_record_id_normalizes():
    assert record_id("./a//b/./c.png") == "a/b/c.png"
    assert record_id("/a/b.png") == "a/b.png"
    assert record_id("a\\b\\c.png") == "a/b/c.png"
    assert record_id("dir/") == "dir"
    assert record_id("\u5199\u771f.png") == "\u5199\u771f.png"
    for bad in ["../x.png", "a/../../b", "a/..", "", "./", "a\x00b"]:
        with pytest.raises(InputRejected):
            record_id(bad)


def test_s3_endpoint_from_environment(monkeypatch):
    pytest.importorskip("s3fs")
    monkeypatch.setenv("COLDPRESS_S3_ENDPOINT_URL", "http://127.0.0.1:1/")
    fs, path = filesystem_for("s3://bucket/prefix", {"anon": True})
    assert path == "bucket/prefix" and fs.client_kwargs["endpoint_url"] == "http://127.0.0.1:1/"
    explicit = {"anon": True, "client_kwargs": {"endpoint_url": "http://127.0.0.1:2/"}}
    fs, _ = filesystem_for("s3://bucket/prefix", explicit)
    assert fs.client_kwargs["endpoint_url"] == "http://127.0.0.1:2/"
    assert explicit == {"anon": True, "client_kwargs": {"endpoint_url": "http://127.0.0.1:2/"}}  # not modified
    monkeypatch.delenv("COLDPRESS_S3_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:3/")
    fs, _ = filesystem_for("s3://bucket/prefix", {"anon": True})
    assert fs.client_kwargs["endpoint_url"] == "http://127.0.0.1:3/"


def test_created_at_is_utc():
    _, row = process_input("a.png", "a.png", b"", CODEC, BPP)
    assert row["created_at"].tzinfo == timezone.utc
