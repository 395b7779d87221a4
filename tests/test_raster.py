"""Geospatial rasters: GeoTIFF in and out with georeferencing, bands, dtypes, nodata and regions.

Every raster here is a real file written by rasterio (GDAL) or tifffile; archives are real Parquet.
The shared GIS samples (../shared/data/geo) are tested when that folder exists.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from affine import Affine  # noqa: E402
from rasterio.crs import CRS  # noqa: E402
from rasterio.io import MemoryFile  # noqa: E402

from coldpress.codec import get_codec  # noqa: E402
from coldpress.jobs.cli import main  # noqa: E402
from coldpress.pipelines.local import encode_local, restore_local, verify_local  # noqa: E402
from coldpress.transforms import raster  # noqa: E402
from coldpress.transforms.archive import open_archive  # noqa: E402
from coldpress.transforms.records import decode_record, pixels_sha256, process_input, restore_record  # noqa: E402

SHARED_GEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geo"
CRS_UTM = CRS.from_epsg(32633)
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4200000.0)


def smooth_bands(count: int, height: int, width: int, lo: int, hi: int, seed: int = 0) -> np.ndarray:
    """(count, height, width) float values in lo..hi that look like terrain: gradients, blobs, texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    out = []
    for b in range(count):
        f = np.sin(2 * np.pi * (x * (1 + b % 3) + 0.5 * y)) + np.cos(2 * np.pi * (y * (2 + b % 2) - 0.3 * x))
        for _ in range(3):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
            f = f + 1.5 * ((x - cx) ** 2 + (y - cy) ** 2 < r * r)
        f = f + 0.05 * rng.normal(size=f.shape)
        f = (f - f.min()) / (f.max() - f.min())
        out.append(lo + f * (hi - lo))
    return np.stack(out)


def geotiff_bytes(data: np.ndarray, *, nodata=None, crs=CRS_UTM, transform=TRANSFORM, descriptions=None,
                  tags=None, band_tags=None, units=None, scales=None, offsets=None, driver="GTiff", **profile) -> bytes:
    count, height, width = data.shape
    with MemoryFile(ext=".jp2" if driver == "JP2OpenJPEG" else ".tif") as mem:
        with mem.open(driver=driver, width=width, height=height, count=count, dtype=data.dtype.name, crs=crs,
                      transform=transform, nodata=nodata, **profile) as ds:
            ds.write(data)
            for b, desc in enumerate(descriptions or [], start=1):
                ds.set_band_description(b, desc)
            for ns, t in (tags or {}).items():
                ds.update_tags(ns=ns, **t) if ns else ds.update_tags(**t)
            for b, t in (band_tags or {}).items():
                ds.update_tags(b, **t)
            if units:
                ds.units = units
            if scales:
                ds.scales = scales
            if offsets:
                ds.offsets = offsets
        return mem.read()


def ten_band_uint16(height=75, width=97) -> tuple[np.ndarray, bytes]:
    """A 10-band uint16 scene of odd size with a nodata (0) border and a diagonal nodata corner."""
    data = np.round(smooth_bands(10, height, width, 300, 12000, seed=3)).astype(np.uint16)
    yy, xx = np.mgrid[0:height, 0:width]
    invalid = (xx < 6) | (yy < 4) | (xx + yy > width + height - 40)
    data[:, invalid] = 0
    tif = geotiff_bytes(
        data, nodata=0, descriptions=[f"B{b + 1:02d}" for b in range(10)],
        tags={"": {"ACQUISITION_DATE": "2021-06-01T10:30:00Z", "SENSOR": "synthetic"}},
        band_tags={1: {"WAVELENGTH": "490"}}, units=["DN"] * 10, scales=[0.0001] * 10, offsets=[-0.1] * 10,
    )
    return data, tif


def _restored(tmp_path: Path, row: dict, fmt: str = "auto", **region) -> Path:
    target = restore_record(row, str(tmp_path / f"out-{fmt}.png"), fmt, region=region or None)
    return Path(target)


# -- synthetic rasters ------------------------------------------------------------------------------
def test_ten_band_uint16_with_nodata_round_trip(tmp_path):
    data, tif = ten_band_uint16()
    codec = get_codec("webp")
    status, row = process_input("scene.tif", "scene.tif", tif, codec, 4.0)
    assert status == "archived", row
    assert row["mode"] == "RASTER" and row["source_mode"] == "10xuint16"
    assert row["achieved_bpp"] <= 4.0
    meta = json.loads(row["metadata"])
    q = meta["quality"]
    assert len(q["rmse_per_band"]) == 10 and len(q["psnr_per_band"]) == 10
    assert math.isclose(q["bits_per_band_pixel"], row["achieved_bpp"] / 10)

    decoded = decode_record(row)
    assert decoded.shape == (75, 97, 10) and decoded.dtype == np.uint16
    assert pixels_sha256(decoded) == row["recon_sha256"]
    out = _restored(tmp_path, row)
    assert out.suffix == ".tif"
    with rasterio.open(out) as ds, MemoryFile(tif) as mem, mem.open() as src:
        assert ds.crs == src.crs and ds.transform == src.transform
        assert (ds.count, ds.dtypes, ds.nodata) == (src.count, src.dtypes, src.nodata)
        assert ds.descriptions == src.descriptions and ds.units == src.units
        assert ds.scales == src.scales and ds.offsets == src.offsets
        assert ds.tags()["ACQUISITION_DATE"] == "2021-06-01T10:30:00Z"
        assert ds.tags(1)["WAVELENGTH"] == "490"
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        restored = ds.read()
    src_invalid = data == 0
    assert np.array_equal(restored == 0, src_invalid)  # nodata exact, no valid pixel became nodata
    valid = ~src_invalid
    for b in range(10):  # error bounded per band, in the source's units
        err = restored[b][valid[b]].astype(float) - data[b][valid[b]]
        rmse = math.sqrt(np.mean(err ** 2))
        assert rmse < 0.05 * (12000 - 300), (b, rmse)
        assert math.isclose(rmse, q["rmse_per_band"][b], rel_tol=1e-3, abs_tol=1e-3)


def test_tags_of_other_metadata_domains_are_restored(tmp_path):
    data = np.round(smooth_bands(3, 40, 50, 10, 250, seed=8)).astype(np.uint8)
    tif = geotiff_bytes(data, tags={"": {"SENSOR": "x"}, "PROCESSING": {"LEVEL": "L2A", "BASELINE": "05.09"}})
    status, row = process_input("t.tif", "t.tif", tif, get_codec("webp"), 6.0)
    assert status == "archived", row
    with rasterio.open(_restored(tmp_path, row)) as ds:
        assert ds.tags(ns="PROCESSING") == {"LEVEL": "L2A", "BASELINE": "05.09"} and ds.tags()["SENSOR"] == "x"


def test_nodata_is_not_coded_and_costs_a_small_mask():
    data, tif = ten_band_uint16()
    enc = raster.encode_raster(tif, "scene.tif", get_codec("webp"), 4.0)
    pkg = raster.unpack_package(enc.package)
    (tile,) = pkg.header["tiles"]
    assert 0 < tile["mask"] < 200  # the mask of the border and corner, losslessly, in bytes
    assert "band_masks" not in tile  # every band has the same nodata pixels
    mask, _ = raster._tile_masks(pkg, 0)
    assert np.array_equal(mask, data[0] != 0)


def test_mask_code_is_lossless_on_random_planes():
    rng = np.random.default_rng(5)
    for shape in [(1, 1), (5, 7), (64, 33), (129, 200)]:
        for p in (0.0, 0.02, 0.5, 1.0):
            plane = rng.random(shape) < p
            assert np.array_equal(raster._unpack_mask(raster._pack_mask(plane), *shape), plane)


def test_band_own_nodata_pixels_are_exact():
    data = np.round(smooth_bands(3, 40, 50, 10, 250, seed=1)).astype(np.uint8)
    data[1, 5:9, 20:30] = 0  # nodata in band 2 only, where bands 1 and 3 are valid
    data[:, :3, :] = 0  # every band
    tif = geotiff_bytes(data, nodata=0)
    status, row = process_input("b.tif", "b.tif", tif, get_codec("webp"), 6.0)
    assert status == "archived", row
    restored = decode_record(row)
    assert np.array_equal(restored.transpose(2, 0, 1) == 0, data == 0)


def test_float32_with_nan_nodata(tmp_path):
    data = smooth_bands(1, 48, 64, -20.5, 41.0, seed=2).astype(np.float32)
    data[0, 10:20, 10:20] = np.nan
    tif = geotiff_bytes(data, nodata=float("nan"))
    status, row = process_input("t.tif", "t.tif", tif, get_codec("webp"), 4.0)
    assert status == "archived", row
    with rasterio.open(_restored(tmp_path, row)) as ds:
        assert ds.dtypes == ("float32",) and math.isnan(ds.nodata)
        out = ds.read(1)
    assert np.array_equal(np.isnan(out), np.isnan(data[0]))
    ok = ~np.isnan(data[0])
    assert np.sqrt(np.mean((out[ok] - data[0][ok]) ** 2)) < 0.05 * 61.5


def test_uint8_rgb_and_16bit_band_ranges_map_back_to_the_source_type(tmp_path):
    data = np.round(smooth_bands(3, 50, 60, 1000, 4095, seed=4)).astype(np.uint16)  # 12-bit samples
    tif = geotiff_bytes(data)
    status, row = process_input("l.tif", "l.tif", tif, get_codec("webp"), 3.0)
    assert status == "archived", row
    pkg = raster.unpack_package(row["bitstream"])
    for b in range(3):
        lo, scale = pkg.header["map"][b]
        assert lo == data[b].min() and math.isclose(scale, (data[b].max() - lo) / 255)
    restored = decode_record(row)
    assert restored.dtype == np.uint16 and restored.min() >= 1000 and restored.max() <= 4095


def test_tiled_raster_decodes_regions_from_the_overlapping_tiles_only():
    data = np.round(smooth_bands(4, 300, 261, 0, 255, seed=6)).astype(np.uint8)
    tif = geotiff_bytes(data)
    enc = raster.encode_raster(tif, "big.tif", get_codec("webp"), 3.0, tile_size=128)
    pkg = raster.unpack_package(enc.package)
    tiles = pkg.header["tiles"]
    assert len(tiles) == 4 and {(t["w"], t["h"]) for t in tiles} <= {(128, 144), (133, 144), (128, 156), (133, 156)}
    full = raster.decode_package(enc.package)
    assert pixels_sha256(full) == enc.recon_sha256
    window = (100, 120, 50, 60)
    assert raster.tiles_in_window(pkg, window) == [0, 1, 2, 3]
    assert raster.tiles_in_window(pkg, (0, 0, 100, 100)) == [0]
    part = raster.decode_package(enc.package, window)
    assert np.array_equal(part, full[120:180, 100:150])


def test_a_learned_region_decodes_only_the_parts_of_its_tiles_it_needs_and_equals_the_full_decode(monkeypatch, tmp_path):
    from coldpress.codec.learned import LearnedCodec
    from coldpress.codec.models import default_model_available

    if not default_model_available():
        pytest.skip("no learned model is bundled (coldpress/codec/weights/MODELS.json)")
    data = np.round(smooth_bands(3, 520, 500, 0, 255, seed=8)).astype(np.uint8)
    tif = geotiff_bytes(data, nodata=None)
    enc = raster.encode_raster(tif, "r.tif", get_codec("learned"), 0.3, tile_size=256)
    pkg = raster.unpack_package(enc.package)
    assert len(pkg.header["tiles"]) == 4 and pkg.header["overlap"] == raster.TILE_OVERLAP
    full = raster.decode_package(enc.package)
    asked: list[tuple[int, int, int, int]] = []
    window_decode = LearnedCodec._decode_rgb_window

    def recorded(self, payload, params, width, height, window):
        asked.append(window)
        return window_decode(self, payload, params, width, height, window)

    monkeypatch.setattr(LearnedCodec, "_decode_rgb_window", recorded)
    window = (230, 240, 60, 50)  # across the corner the four tiles share
    part = raster.decode_package(enc.package, window)
    assert np.array_equal(part, full[240:290, 230:290])
    # each tile decoded only its part of the window (in its coded window's coordinates), coded at full scale
    parts = []
    for i in range(4):
        cx, cy, cw, ch = raster.coded_window(pkg.header, i)
        x0, y0, x1, y1 = max(230, cx), max(240, cy), min(290, cx + cw), min(290, cy + ch)
        parts.append((x0 - cx, y0 - cy, x1 - x0, y1 - y0))
    assert sorted(asked) == sorted(parts) and all(w * h < 60 * 50 for _, _, w, h in parts)
    assert all(p["s"] == 8 for tile in enc.codec_params for p in tile)
    with MemoryFile(tif) as mem, mem.open() as src:
        meta = raster.raster_metadata(src)
    out = tmp_path / "region.tif"
    raster.write_raster(pkg, meta, str(out), window=window)
    with rasterio.open(out) as ds:
        assert np.array_equal(ds.read().transpose(1, 2, 0), part)


def test_region_restore_is_georeferenced(tmp_path):
    data = np.round(smooth_bands(3, 300, 261, 0, 255, seed=7)).astype(np.uint8)
    tif = geotiff_bytes(data, nodata=None)
    enc = raster.encode_raster(tif, "r.tif", get_codec("webp"), 3.0, tile_size=128)
    with MemoryFile(tif) as mem, mem.open() as src:
        meta = raster.raster_metadata(src)
    pkg = raster.unpack_package(enc.package)
    # A box in the raster's CRS, not on pixel edges: the restored bounds cover it within a pixel.
    box = (500000 + 333.0, 4200000 - 2111.0, 500000 + 1507.0, 4200000 - 1204.0)
    win = raster.resolve_window(meta, bbox=box)
    out = tmp_path / "region.tif"
    raster.write_raster(pkg, meta, str(out), window=win)
    with rasterio.open(out) as ds:
        left, bottom, right, top = ds.bounds
        assert ds.crs == CRS_UTM and ds.res == (10.0, 10.0)
        for got, want in zip((left, bottom, right, top), box):
            assert abs(got - want) <= 10.0
        assert left <= box[0] and bottom <= box[1] and right >= box[2] and top >= box[3]
        pixels = ds.read()
    full = raster.decode_package(enc.package)
    col, row, w, h = win
    assert np.array_equal(pixels.transpose(1, 2, 0), full[row:row + h, col:col + w])
    # The same box given in EPSG:4326
    from rasterio.warp import transform_bounds

    lonlat = transform_bounds(CRS_UTM, "EPSG:4326", *box)
    win2 = raster.resolve_window(meta, bbox=lonlat, bbox_crs="EPSG:4326")
    assert abs(win2[0] - win[0]) <= 2 and abs(win2[1] - win[1]) <= 2
    with pytest.raises(Exception, match="does not overlap"):
        raster.resolve_window(meta, bbox=(0, 0, 10, 10))


# -- bad inputs: rejected with a reason, the job goes on ----------------------------------------------
def test_bad_rasters_are_rejected_with_what_to_do(tmp_path):
    import tifffile

    src = tmp_path / "src"
    src.mkdir()
    data, good = ten_band_uint16(40, 50)
    (src / "good.tif").write_bytes(good)
    (src / "truncated.tif").write_bytes(good[: len(good) // 3])
    complex_data = (np.ones((1, 16, 16)) * (1 + 2j)).astype(np.complex64)
    (src / "complex.tif").write_bytes(geotiff_bytes(complex_data))
    pages = io.BytesIO()
    with tifffile.TiffWriter(pages) as w:  # two images of different sizes in one TIFF
        w.write(np.zeros((32, 32, 3), np.uint16), photometric="rgb")
        w.write(np.zeros((16, 24, 3), np.uint16), photometric="rgb")
    (src / "pages.tif").write_bytes(pages.getvalue())
    manifest = encode_local(str(src), str(tmp_path / "a"), codec="webp", bpp=10.0, progress=False)
    assert manifest["archived"] == 1 and manifest["rejected"] == 3
    reasons = dict(zip(*open_archive(str(tmp_path / "a")).rejected().select(["id", "reason"]).to_pydict().values()))
    assert "complex64" in reasons["complex.tif"] and "convert" in reasons["complex.tif"]
    assert "pages" in reasons["pages.tif"] and "gdal_translate" in reasons["pages.tif"]
    assert "truncated" in reasons["truncated.tif"] or "corrupt" in reasons["truncated.tif"]
    assert verify_local(str(tmp_path / "a"), progress=False)["ok"] == 1


# -- the command line ---------------------------------------------------------------------------------
def test_cli_encode_restore_window_and_bbox(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    data, tif = ten_band_uint16(60, 70)
    (src / "scene.tif").write_bytes(tif)
    archive, out = tmp_path / "a", tmp_path / "d"
    assert main(["encode", str(src), str(archive), "--bpp", "4", "--codec", "webp", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(archive)]) == 0
    shown = capsys.readouterr().out
    assert "scene.tif: 10xuint16 EPSG:32633" in shown and "bits per band-pixel" in shown
    assert main(["restore", str(archive), str(out), "--all", "--quiet"]) == 0
    with rasterio.open(out / "scene.tif") as ds:
        assert ds.crs == CRS_UTM and ds.count == 10 and ds.dtypes[0] == "uint16" and ds.nodata == 0
    assert main(["restore", str(archive), str(tmp_path / "w"), "--id", "scene.tif", "--window", "5", "7", "20", "11",
                 "--quiet"]) == 0
    with rasterio.open(tmp_path / "w" / "scene.tif") as ds:
        assert (ds.width, ds.height) == (20, 11)
        assert ds.transform == TRANSFORM @ Affine.translation(5, 7)
    assert main(["restore", str(archive), str(tmp_path / "p"), "--all", "--format", "png", "--quiet"]) == 0
    assert (tmp_path / "p" / "scene.png").exists()
    assert main(["restore", str(archive), str(tmp_path / "x"), "--all", "--bbox", "0", "0", "1", "1", "--quiet"]) == 1
    assert "does not overlap" in capsys.readouterr().err


# -- the shared GIS samples ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def geo_restored(tmp_path_factory):
    if not SHARED_GEO.is_dir() or not list(SHARED_GEO.glob("*.tif")):
        pytest.skip(f"{SHARED_GEO} is absent: the shared GIS samples are not on this machine")
    tmp = tmp_path_factory.mktemp("geo")
    manifest = encode_local(str(SHARED_GEO), str(tmp / "a"), codec="avif-half", bpp=0.1, progress=False)
    restore_local(str(tmp / "a"), str(tmp / "d"), progress=False)
    return manifest, tmp


GEO_FILES = sorted(p.name for p in SHARED_GEO.glob("*.tif")) if SHARED_GEO.is_dir() else ["(absent)"]


@pytest.mark.parametrize("name", GEO_FILES)
def test_shared_geo_file_round_trip(geo_restored, name):
    manifest, tmp = geo_restored
    assert manifest["rejected"] == 0
    row = open_archive(str(tmp / "a")).read(ids=[name]).to_pylist()[0]
    assert row["mode"] == "RASTER" and row["achieved_bpp"] <= 0.1
    with rasterio.open(SHARED_GEO / name) as src, rasterio.open(tmp / "d" / name) as out:
        assert out.crs == src.crs and out.transform.almost_equals(src.transform)
        assert (out.count, out.dtypes, out.nodata, out.width, out.height) == \
            (src.count, src.dtypes, src.nodata, src.width, src.height)
        assert out.descriptions == src.descriptions and out.colorinterp == src.colorinterp
        assert out.tags() == src.tags() and out.overviews(1) == src.overviews(1)
        assert np.array_equal(out.dataset_mask(), src.dataset_mask())
        a, b = src.read(), out.read()
        if src.nodata is not None:
            assert np.array_equal(a == src.nodata, b == src.nodata)
        quality = json.loads(row["metadata"])["quality"]
        peak = 255.0 if src.dtypes[0] == "uint8" else None
        for i in range(src.count):
            valid = src.read_masks(i + 1) > 0
            mse = np.mean((a[i][valid].astype(float) - b[i][valid]) ** 2)
            rng = peak or float(a[i][valid].max() - a[i][valid].min())
            psnr = 10 * math.log10(rng * rng / mse)
            assert psnr > 17.0, (name, i, psnr)
            assert math.isclose(psnr, quality["psnr_per_band"][i], abs_tol=0.01)


# -- STAC ---------------------------------------------------------------------------------------------
def test_stac_collection_and_items(tmp_path):
    import hashlib

    import pystac
    from PIL import Image
    from rasterio.warp import transform_bounds

    src = tmp_path / "src"
    (src / "2021").mkdir(parents=True)
    data, tif = ten_band_uint16(40, 50)
    (src / "2021" / "scene.tif").write_bytes(tif)  # ACQUISITION_DATE tag: 2021-06-01T10:30:00Z
    rgb = np.round(smooth_bands(3, 40, 50, 0, 255, seed=9)).astype(np.uint8)
    (src / "m_1234_20090818.tif").write_bytes(geotiff_bytes(rgb, crs=CRS.from_epsg(26914), nodata=None))
    Image.fromarray(rgb.transpose(1, 2, 0)).save(src / "photo.png")  # a photo: no Item
    archive = tmp_path / "a"
    encode_local(str(src), str(archive), codec="webp", bpp=10.0, progress=False)
    assert main(["stac", str(archive), "--out", str(tmp_path / "stac"), "--quiet"]) == 0
    collection = pystac.Collection.from_file(str(tmp_path / "stac" / "collection.json"))
    items = {i.properties["coldpress:id"]: i for i in collection.get_items(recursive=True)}
    assert sorted(items) == ["2021/scene.tif", "m_1234_20090818.tif"]
    scene = items["2021/scene.tif"]
    assert scene.datetime.isoformat() == "2021-06-01T10:30:00+00:00"
    assert items["m_1234_20090818.tif"].datetime.date().isoformat() == "2009-08-18"
    assert scene.properties["proj:code"] == "EPSG:32633" and scene.properties["proj:shape"] == [40, 50]
    assert scene.properties["proj:transform"] == list(TRANSFORM)[:6]
    west, south, east, north = transform_bounds(CRS_UTM, "EPSG:4326", 500000, 4200000 - 400, 500500, 4200000)
    assert scene.bbox == pytest.approx([west, south, east, north], abs=1e-6)
    asset = scene.assets["archive"]
    bands = asset.extra_fields["raster:bands"]
    assert len(bands) == 10 and bands[0]["data_type"] == "uint16" and bands[0]["nodata"] == 0
    shard = Path(asset.href)
    assert shard.exists() and shard.suffix == ".parquet"
    assert asset.extra_fields["file:checksum"] == "1220" + hashlib.sha256(shard.read_bytes()).hexdigest()
    assert asset.extra_fields["file:size"] == shard.stat().st_size
    # Search by place and time, as a STAC client would: the scene's centre, in June 2021.
    lon, lat = (west + east) / 2, (south + north) / 2
    hits = [i for i in collection.get_items(recursive=True)
            if i.bbox[0] <= lon <= i.bbox[2] and i.bbox[1] <= lat <= i.bbox[3] and i.datetime.year == 2021]
    assert [i.properties["coldpress:id"] for i in hits] == ["2021/scene.tif"]


def test_jpeg2000_source_is_archived_as_a_raster(tmp_path):
    data = np.round(smooth_bands(4, 48, 56, 100, 4000, seed=12)).astype(np.uint16)
    jp2 = geotiff_bytes(data, driver="JP2OpenJPEG", QUALITY="100", REVERSIBLE="YES")
    assert jp2[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n"
    status, row = process_input("s2.jp2", "s2.jp2", jp2, get_codec("webp"), 6.0)
    assert status == "archived", row
    assert row["source_format"] == "JP2OpenJPEG" and row["source_mode"] == "4xuint16"
    with rasterio.open(_restored(tmp_path, row)) as ds:
        assert ds.crs == CRS_UTM and ds.transform == TRANSFORM and ds.count == 4 and ds.dtypes[0] == "uint16"


def test_shared_naip_bbox_restore_matches_the_request_within_a_pixel(geo_restored, tmp_path):
    from rasterio.warp import transform_bounds

    _, tmp = geo_restored
    name = "m_4709963_se_14_1_20090818.tif"
    if not (SHARED_GEO / name).exists():
        pytest.skip(f"{name} is not in {SHARED_GEO}")
    box = (486500.3, 5206500.7, 488000.2, 5208000.9)  # EPSG:26914, not on pixel edges
    lonlat = (-99.17, 47.01, -99.15, 47.03)
    assert main(["restore", str(tmp / "a"), str(tmp_path / "utm"), "--id", name, "--bbox", *map(str, box), "--quiet"]) == 0
    assert main(["restore", str(tmp / "a"), str(tmp_path / "ll"), "--id", name, "--bbox", *map(str, lonlat),
                 "--bbox-crs", "EPSG:4326", "--quiet"]) == 0
    with rasterio.open(SHARED_GEO / name) as src:
        want_ll = transform_bounds("EPSG:4326", src.crs, *lonlat, densify_pts=21)
    for folder, want in (("utm", box), ("ll", want_ll)):
        with rasterio.open(tmp_path / folder / name) as ds:
            assert ds.crs.to_epsg() == 26914 and ds.count == 4 and ds.res == (5.0, 5.0)
            assert all(abs(g - w) <= 5.0 for g, w in zip(ds.bounds, want)), (ds.bounds, want)
        with rasterio.open(tmp / "d" / name) as whole:
            c, r = map(round, ~whole.transform * (ds.bounds.left, ds.bounds.top))
            with rasterio.open(tmp_path / folder / name) as part:
                assert np.array_equal(part.read(), whole.read(window=((r, r + part.height), (c, c + part.width))))


@pytest.mark.parametrize("case", ["no-nodata", "nodata-uint16", "nodata-uint8", "internal-mask", "float-nodata"])
def test_tile_masks_equal_gdals_on_windows_off_the_blocks(case):
    """_read_tile computes the masks from the pixels where GDAL derives them from the pixels (it would
    read every unaligned window a second time); they equal what GDAL reads, and files with a real mask
    band (or float nodata) still take GDAL's masks."""
    from rasterio.windows import Window

    from coldpress.transforms.raster.encode import _masks_from_pixels, _read_tile

    rng = np.random.default_rng(5)
    dtype = {"nodata-uint16": np.uint16, "float-nodata": np.float32}.get(case, np.uint8)
    data = rng.integers(0, 200, size=(3, 300, 280)).astype(dtype)
    nodata = None if case in ("no-nodata", "internal-mask") else 7
    if nodata is not None:
        data[0, :40, :] = nodata          # one band's own nodata
        data[:, 100:130, 50:90] = nodata  # every band's
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=280, height=300, count=3, dtype=data.dtype.name, crs=CRS_UTM,
                      transform=TRANSFORM, nodata=nodata, tiled=True, blockxsize=256, blockysize=256) as ds:
            ds.write(data)
            if case == "internal-mask":
                mask = np.full((300, 280), 255, np.uint8)
                mask[10:60, 200:] = 0
                ds.write_mask(mask)
        with mem.open() as ds:
            derived = _masks_from_pixels(ds, ds.read(window=Window(0, 0, 8, 8)))
            assert (derived is None) == (case in ("internal-mask", "float-nodata"))
            for win in [(0, 0, 264, 264), (248, 248, 32, 52), (120, 30, 150, 264)]:
                _, dataset_valid, band_valid = _read_tile(ds, win, "t.tif")
                w = Window(*win)
                np.testing.assert_array_equal(band_valid, ds.read_masks(window=w) > 0)
                np.testing.assert_array_equal(dataset_valid, (ds.dataset_mask(window=w) > 0) & band_valid.any(0))
