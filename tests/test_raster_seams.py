"""Tile seams of the raster package: tiles coded with an overlap and blended across their edges.

A real GeoTIFF made here (3-band uint16, 3 x 3 tiles) is coded with the real WebP codec. The seam is
measured as the mean absolute step of the *coding error* across tile edges, against the same step
across the codec's own (deblocked) 16 px macroblock edges inside tiles: without the overlap, a tile
edge is a coded image's border (no deblocking across it, edge-extended prediction, each side coded
at its own quality) and the step is about 2 times larger; with it, no larger than inside a tile.
"""

from __future__ import annotations

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from test_raster import geotiff_bytes, smooth_bands  # noqa: E402

from coldpress.codec import get_codec  # noqa: E402
from coldpress.transforms import raster  # noqa: E402

SIZE, TILE, BPP = 768, 256, 0.12


@pytest.fixture(scope="module")
def scene():
    data = np.round(smooth_bands(3, SIZE, SIZE, 500, 9000, seed=7)).astype(np.uint16)
    return data, geotiff_bytes(data)


def _seam_ratio(pkg_bytes: bytes, data: np.ndarray) -> tuple[float, list[int]]:
    pkg = raster.unpack_package(pkg_bytes)
    decoded = raster.decode_package(pkg_bytes).astype(np.float64)
    err = decoded - data.transpose(1, 2, 0).astype(np.float64)
    edges = sorted({t["x"] for t in pkg.header["tiles"] if t["x"] > 0})
    assert edges == sorted({t["y"] for t in pkg.header["tiles"] if t["y"] > 0})
    blocks = [e for e in range(16, SIZE, 16) if all(abs(e - k) > 16 for k in edges)]

    def step(cols) -> float:  # columns and rows alike
        return float(np.mean([np.abs(err[:, c] - err[:, c - 1]).mean() + np.abs(err[c] - err[c - 1]).mean()
                              for c in cols]))

    return step(edges) / step(blocks), edges


def test_tile_edges_show_no_seam_with_the_overlap(scene):
    data, tif = scene
    codec = get_codec("webp")
    blended = raster.encode_raster(tif, "scene.tif", codec, BPP, tile_size=TILE)
    plain = raster.encode_raster(tif, "scene.tif", codec, BPP, tile_size=TILE, overlap=0)
    ratio, edges = _seam_ratio(blended.package, data)
    ratio_plain, _ = _seam_ratio(plain.package, data)
    assert edges == [256, 512]
    assert ratio_plain > 1.6, f"without the overlap the seam should show (ratio {ratio_plain:.2f})"
    assert ratio < 1.15, f"seam step {ratio:.2f}x the step across macroblock edges"
    # The overlap's pixels cost bytes (here 256 px tiles: up to 13 % more pixels coded, 0.45 dB at the
    # same budget; with the default 1024 px tiles about 3 %, results/raster/seams.txt).
    assert len(blended.package) <= int(BPP * SIZE * SIZE / 8)
    assert blended.quality["psnr"] > plain.quality["psnr"] - 0.7


def test_blended_package_is_version_2_and_regions_equal_the_full_decode(scene):
    data, tif = scene
    enc = raster.encode_raster(tif, "scene.tif", get_codec("webp"), BPP, tile_size=TILE)
    pkg = raster.unpack_package(enc.package)
    assert enc.package[4] == 2 and pkg.header["overlap"] == raster.TILE_OVERLAP
    assert raster.coded_window(pkg.header, 4) == (256 - raster.TILE_OVERLAP, 256 - raster.TILE_OVERLAP, 256 + 2 * raster.TILE_OVERLAP, 256 + 2 * raster.TILE_OVERLAP)  # the middle tile
    assert raster.coded_window(pkg.header, 0) == (0, 0, 256 + raster.TILE_OVERLAP, 256 + raster.TILE_OVERLAP)
    full = raster.decode_package(enc.package)
    assert raster.recon_sha256(pkg) == enc.recon_sha256
    for window in ((250, 250, 20, 20), (0, 0, 256, 256), (255, 1, 2, 700), (500, 100, 268, 3)):
        c, r, w, h = window
        assert np.array_equal(raster.decode_package(enc.package, window), full[r:r + h, c:c + w]), window


def test_a_single_tile_raster_keeps_version_1_without_overlap(scene):
    data, tif = scene
    enc = raster.encode_raster(tif, "scene.tif", get_codec("webp"), BPP, tile_size=1024)
    pkg = raster.unpack_package(enc.package)
    assert enc.package[4] == 1 and "overlap" not in pkg.header and len(pkg.header["tiles"]) == 1


def test_bytes_a_tile_leaves_unused_go_to_the_tiles_after_it(scene):
    """WebP's quality steps rarely land on a tile's budget; what one tile leaves goes to the next ones, so
    the package fills its budget (with fixed shares this scene used 94.6 % of it at 0.3 bpp)."""
    data, tif = scene
    budget = int(0.3 * SIZE * SIZE / 8)
    enc = raster.encode_raster(tif, "scene.tif", get_codec("webp"), 0.3, tile_size=TILE)
    assert 0.985 * budget <= len(enc.package) <= budget
