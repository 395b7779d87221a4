"""Rasters on the Ray and Beam engines: the same archive bytes as the local engine, and GeoTIFF restores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
ray = pytest.importorskip("ray")
pytest.importorskip("apache_beam")

from PIL import Image  # noqa: E402

from coldpress.pipelines.local import encode_local, restore_local  # noqa: E402
from coldpress.transforms.archive import open_archive  # noqa: E402
from test_raster import geotiff_bytes, smooth_bands, ten_band_uint16  # noqa: E402

REGION = {"window": (5, 7, 20, 11)}
COLUMNS = ["id", "mode", "width", "height", "achieved_bpp", "bitstream", "bitstream_sha256", "recon_sha256", "psnr",
           "metadata"]


def _rows(archive: Path) -> dict:
    return {r["id"]: r for r in open_archive(str(archive)).read(columns=COLUMNS).to_pylist()}


def test_ray_and_beam_archive_and_restore_rasters_like_the_local_engine(tmp_path):
    from coldpress.pipelines.beam import encode_beam, restore_beam
    from coldpress.pipelines.ray import RestoreService, connect, encode_ray, restore_ray

    src = tmp_path / "src"
    src.mkdir()
    _, tif = ten_band_uint16(40, 50)
    (src / "scene.tif").write_bytes(tif)
    rgbn = np.round(smooth_bands(4, 36, 44, 1, 255, seed=11)).astype(np.uint8)
    rgbn[:, :, :5] = 0
    (src / "rgbn.tif").write_bytes(geotiff_bytes(rgbn, nodata=0))
    Image.fromarray(rgbn[:3].transpose(1, 2, 0)).save(src / "photo.png")
    opts = dict(codec="webp", bpp=10.0, progress=False)
    encode_local(str(src), str(tmp_path / "local"), **opts)
    started_here = not ray.is_initialized()
    connect(num_cpus=2, object_store_memory=256 << 20, quiet=True)
    try:
        encode_ray(str(src), str(tmp_path / "ray"), **opts)
        restore_ray(str(tmp_path / "local"), str(tmp_path / "ray-restored"), progress=False)
        # The warm restore service: whole rasters as COGs, and regions decoded from their tiles.
        with RestoreService.start(str(tmp_path / "local"), num_decoders=1) as service:
            service_paths = service.restore(["scene.tif", "photo.png"], str(tmp_path / "svc"))
            service_region = service.restore(["scene.tif"], str(tmp_path / "svc-region"), region=REGION)
            region_pixels = service.restore_pixels(["scene.tif"], region=REGION)["scene.tif"]
    finally:
        if started_here:
            ray.shutdown()
    encode_beam(str(src), str(tmp_path / "beam"), pipeline_args=["--direct_num_workers=1"], **opts)
    restore_beam(str(tmp_path / "local"), str(tmp_path / "beam-restored"), progress=False,
                 pipeline_args=["--direct_num_workers=1"])
    restore_local(str(tmp_path / "local"), str(tmp_path / "local-restored"), progress=False)
    restore_local(str(tmp_path / "local"), str(tmp_path / "local-region"), ids=["scene.tif"], progress=False,
                  region=REGION)
    assert [Path(p).name for p in service_paths] == ["photo.png", "scene.tif"]
    assert [Path(p).name for p in service_region] == ["scene.tif"]
    for a, b in (("local-restored", "svc"), ("local-region", "svc-region")):
        with rasterio.open(tmp_path / a / "scene.tif") as x, rasterio.open(tmp_path / b / "scene.tif") as y:
            assert (x.crs, x.transform, x.shape, x.count, x.nodata) == (y.crs, y.transform, y.shape, y.count, y.nodata)
            assert np.array_equal(x.read(), y.read())
    with rasterio.open(tmp_path / "local-region" / "scene.tif") as x:
        assert x.shape == (11, 20) and np.array_equal(x.read().transpose(1, 2, 0), region_pixels)

    local = _rows(tmp_path / "local")
    assert sorted(local) == ["photo.png", "rgbn.tif", "scene.tif"] and local["scene.tif"]["mode"] == "RASTER"
    for engine in ("ray", "beam"):
        rows = _rows(tmp_path / engine)
        assert rows == local, f"{engine} rows differ from the local engine's"
        for name in ("scene.tif", "rgbn.tif"):
            with rasterio.open(tmp_path / "local-restored" / name) as a, \
                    rasterio.open(tmp_path / f"{engine}-restored" / name) as b:
                assert (b.crs, b.transform, b.count, b.dtypes, b.nodata) == (a.crs, a.transform, a.count, a.dtypes,
                                                                             a.nodata)
                assert np.array_equal(a.read(), b.read())
        assert (tmp_path / f"{engine}-restored" / "photo.png").exists()


def test_ray_and_beam_restore_regions_like_the_local_engine(tmp_path):
    """--window / --bbox on the Ray and Beam restore jobs: the same GeoTIFF as the local engine's."""
    from coldpress.pipelines.beam import restore_beam
    from coldpress.pipelines.ray import connect, restore_ray

    src = tmp_path / "src"
    src.mkdir()
    _, tif = ten_band_uint16(40, 50)
    (src / "scene.tif").write_bytes(tif)
    encode_local(str(src), str(tmp_path / "archive"), codec="webp", bpp=10.0, progress=False)
    with rasterio.open(src / "scene.tif") as ds:
        left, top = ds.transform * (12, 9)
        right, bottom = ds.transform * (30, 21)
    bbox = {"bbox": (left, bottom, right, top)}
    for name, region in (("window", REGION), ("bbox", bbox)):
        restore_local(str(tmp_path / "archive"), str(tmp_path / f"local-{name}"), progress=False, region=region)
    started_here = not ray.is_initialized()
    connect(num_cpus=2, object_store_memory=256 << 20, quiet=True)
    try:
        for name, region in (("window", REGION), ("bbox", bbox)):
            restore_ray(str(tmp_path / "archive"), str(tmp_path / f"ray-{name}"), progress=False, region=region)
    finally:
        if started_here:
            ray.shutdown()
    for name, region in (("window", REGION), ("bbox", bbox)):
        restore_beam(str(tmp_path / "archive"), str(tmp_path / f"beam-{name}"), progress=False, region=region,
                     pipeline_args=["--direct_num_workers=1"])
    for name, shape in (("window", (11, 20)), ("bbox", (12, 18))):
        with rasterio.open(tmp_path / f"local-{name}" / "scene.tif") as a:
            assert a.shape == shape
            expected = (a.crs, a.transform, a.count, a.dtypes, a.nodata, a.read().tobytes())
        for engine in ("ray", "beam"):
            with rasterio.open(tmp_path / f"{engine}-{name}" / "scene.tif") as b:
                assert (b.crs, b.transform, b.count, b.dtypes, b.nodata, b.read().tobytes()) == expected, (engine, name)
