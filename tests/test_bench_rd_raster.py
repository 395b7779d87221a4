"""`coldpress bench rd` on a folder of geospatial rasters: JPEG 2000 and COG-WebP anchors at the bytes
of coldpress's raster package, all bands, scored per band in the source's units.

The rasters are real GeoTIFF files written by rasterio in the test; the anchors are GDAL's real
JP2OpenJPEG and COG drivers.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from test_raster import geotiff_bytes, smooth_bands  # noqa: E402

from coldpress.jobs.bench.rd_raster import Source, raster_files  # noqa: E402
from coldpress.jobs.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def raster_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rasters")
    rgb = np.round(smooth_bands(3, 200, 240, 10, 240, seed=1)).astype(np.uint8)
    (folder / "rgb.tif").write_bytes(geotiff_bytes(rgb))
    four = np.round(smooth_bands(4, 180, 210, 200, 9000, seed=2)).astype(np.uint16)
    four[:, :10, :] = 0  # a nodata strip
    (folder / "four_uint16.tif").write_bytes(geotiff_bytes(four, nodata=0))
    return folder


@pytest.fixture(scope="module")
def rd_raster_run(raster_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("rd_raster_out")
    argv = ["bench", "rd", str(raster_folder), "--codecs", "webp", "--bpp", "0.8", "1.6", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    return out, rows


def test_a_raster_folder_is_benchmarked_as_rasters(raster_folder, tmp_path):
    rasters, others = raster_files(raster_folder)
    assert [p.name for p in rasters] == ["four_uint16.tif", "rgb.tif"] and others == []


def test_every_raster_and_target_has_both_anchors_within_coldpress_bytes(rd_raster_run):
    out, rows = rd_raster_run
    assert {r["codec"] for r in rows} == {"webp", "jp2", "cog-webp"}
    for image in ("rgb.tif", "four_uint16.tif"):
        for target in ("0.8", "1.6"):
            group = {r["codec"]: r for r in rows if r["image"] == image and r["target_bpp"] == target}
            ours = group["webp"]
            assert ours["status"] == "ok", ours["message"]
            for anchor in ("jp2", "cog-webp"):
                a = group[anchor]
                assert int(a["budget_bytes"]) == int(ours["bytes"]), "anchors get coldpress's bytes"
                if a["status"] == "ok":
                    assert int(a["bytes"]) <= int(a["budget_bytes"])
                    assert len(json.loads(a["psnr_per_band"])) == int(ours["bands"]), "all bands scored"
                else:
                    assert a["status"] == "unreachable" and float(a["needed_bpp"]) > float(a["achieved_bpp"] or 0)
    jp2 = [r for r in rows if r["codec"] == "jp2"]
    assert all(r["status"] == "ok" for r in jp2), [r["message"] for r in jp2]
    # More bytes, more quality: the anchors' rate control is real.
    for image in ("rgb.tif", "four_uint16.tif"):
        lo, hi = (next(r for r in jp2 if r["image"] == image and r["target_bpp"] == t) for t in ("0.8", "1.6"))
        assert float(hi["psnr"]) > float(lo["psnr"]) + 1.0
    report = json.loads((out / "summary.json").read_text())
    assert report["kind"] == "rasters" and set(report["bjontegaard"]["against"]) == {"jp2", "cog-webp"}
    assert len(report["per_band"]) == 4
    for name in ("summary.csv", "bd.csv", "rd.png"):
        assert (out / name).stat().st_size > 0


def test_scores_are_per_band_in_source_units_over_valid_pixels(raster_folder):
    src = Source(raster_folder / "four_uint16.tif")
    decoded = src.data.astype(np.float64) + 3.0  # an error of 3 DN on every valid pixel
    decoded[:, :10, :] = 12345  # nodata pixels are not scored
    scores = src.score(decoded)
    for b in range(4):
        peak = src.hi[b] - src.lo[b]
        assert scores["psnr_per_band"][b] == pytest.approx(20 * math.log10(peak / 3.0), abs=1e-3)
        assert scores["rmse_per_band"][b] == pytest.approx(3.0)
    rgb = Source(raster_folder / "rgb.tif")
    assert rgb.score(rgb.data.astype(np.float64) + 1)["psnr"] == pytest.approx(20 * math.log10(255.0), abs=1e-3)


def test_cog_webp_of_a_16_bit_raster_is_restored_to_its_units(rd_raster_run):
    _, rows = rd_raster_run
    r = next(r for r in rows if r["codec"] == "cog-webp" and r["image"] == "four_uint16.tif" and r["target_bpp"] == "1.6")
    if r["status"] != "ok":
        pytest.skip(f"COG-WebP cannot reach 1.6 bpp here: {r['message']}")
    params = json.loads(r["params"])
    assert params["files"] == 2  # bands 1-3, then band 4 repeated to three
    assert 20 < float(r["psnr"]) < 60  # scored against the 16-bit source after the inverse mapping
