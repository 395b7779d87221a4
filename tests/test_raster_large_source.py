"""Large raster sources are not read whole: ``sources.read_source`` streams their sha256 and leaves the
pixels to GDAL, which reads them window by window (``sources.SourceFile``). The archive row is the
same as when the file's bytes are read whole.

The size threshold is lowered for these tests (a real 64 MB file is the benchmark's job:
tools/bench_raster_scale.py --read both measures the peak memory of both ways on a big scene).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from test_raster import CRS_UTM, TRANSFORM, smooth_bands  # noqa: E402

from coldpress.codec import get_codec  # noqa: E402
from coldpress.pipelines.local import encode_local  # noqa: E402
from coldpress.transforms import sources  # noqa: E402
from coldpress.transforms.archive import open_archive  # noqa: E402
from coldpress.transforms.records import process_input  # noqa: E402
from coldpress.transforms.sources import SourceFile, read_bytes, read_source  # noqa: E402

COMPARED = ("id", "source_bytes", "source_sha256", "bitstream", "bitstream_sha256", "recon_sha256", "mode",
            "width", "height", "achieved_bpp", "psnr", "metadata")


@pytest.fixture
def scene(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    data = np.round(smooth_bands(4, 700, 600, 100, 20000, seed=5)).astype(np.uint16)
    data[:, :20, :] = 0
    path = folder / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=600, height=700, count=4, dtype="uint16", crs=CRS_UTM,
                       transform=TRANSFORM, nodata=0, tiled=True, blockxsize=256, blockysize=256,
                       compress="deflate") as ds:
        ds.write(data)
    photo = np.round(smooth_bands(3, 90, 120, 0, 255, seed=6)).astype(np.uint8)
    with rasterio.open(folder / "photo.tif", "w", driver="GTiff", width=120, height=90, count=3,
                       dtype="uint8", photometric="RGB") as ds:  # not georeferenced: a photo
        ds.write(photo)
    return folder


@pytest.fixture
def small_threshold(monkeypatch):
    monkeypatch.setattr(sources, "LARGE_SOURCE_BYTES", 1000)


def test_a_large_raster_is_left_on_disk_with_its_size_and_checksum(scene, small_threshold):
    path = scene / "scene.tif"
    sf = read_source(str(path))
    assert isinstance(sf, SourceFile)
    raw = path.read_bytes()
    assert len(sf) == len(raw) and sf.sha256 == hashlib.sha256(raw).hexdigest() and sf[:4] == raw[:4]
    assert sf.read() == raw
    with pytest.raises(TypeError, match="read\\(\\) it for the rest"):
        sf[:10_000]


def test_small_files_and_other_names_are_read_whole(scene, tmp_path):
    assert isinstance(read_source(str(scene / "scene.tif")), bytes)  # under the real threshold
    other = tmp_path / "notes.txt"
    other.write_bytes(b"x" * 5000)
    sources.LARGE_SOURCE_BYTES, saved = 1000, sources.LARGE_SOURCE_BYTES
    try:
        assert read_source(str(other)) == b"x" * 5000
    finally:
        sources.LARGE_SOURCE_BYTES = saved


@pytest.mark.parametrize("name", ["scene.tif", "photo.tif"])
def test_the_row_is_the_same_read_window_by_window_or_whole(scene, small_threshold, name):
    uri = str(scene / name)
    codec = get_codec("webp")
    lazy = read_source(uri)
    assert isinstance(lazy, SourceFile)
    status_a, a = process_input(name, uri, lazy, codec, 2.0)
    status_b, b = process_input(name, uri, read_bytes(uri), codec, 2.0)
    assert status_a == status_b == "archived", (a.get("reason"), b.get("reason"))
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
    assert (a["mode"] == "RASTER") == (name == "scene.tif")


def test_encode_local_archives_large_rasters_read_by_window(scene, tmp_path, small_threshold):
    manifest = encode_local(str(scene), str(tmp_path / "archive"), codec="webp", bpp=2.0, progress=False)
    assert manifest["archived"] == 2 and manifest["rejected"] == 0
    rows = {r["id"]: r for r in open_archive(str(tmp_path / "archive")).read(columns=list(COMPARED)).to_pylist()}
    raw = (scene / "scene.tif").read_bytes()
    assert rows["scene.tif"]["source_sha256"] == hashlib.sha256(raw).hexdigest()
    assert rows["scene.tif"]["source_bytes"] == len(raw)


def test_a_large_raster_on_an_fsspec_filesystem_is_read_through_gdal_by_window(scene, small_threshold):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/coldpress-large/scene.tif", (scene / "scene.tif").read_bytes())
    try:
        uri = "memory://coldpress-large/scene.tif"
        lazy = read_source(uri)
        assert isinstance(lazy, SourceFile)
        codec = get_codec("webp")
        _, a = process_input("scene.tif", uri, lazy, codec, 2.0)
        _, b = process_input("scene.tif", uri, read_bytes(uri), codec, 2.0)
        assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
    finally:
        fs.rm("/coldpress-large", recursive=True)
