"""Large raster sources are not read whole: ``sources.read_source`` streams their sha256 and leaves the
pixels to GDAL, which reads them window by window (``sources.SourceFile``). The archive row is the
same as when the file's bytes are read whole. The Beam engine does the same: its read stage's element
for such a file is a ``SourceFile`` of a few hundred bytes (as Beam's coder encodes it), not the file,
and the row it archives is the local engine's.

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


# -- the Beam engine: the element carries the file's name, size and checksum, not its bytes ----------------
@pytest.fixture
def beam_scene(tmp_path):
    """A smaller scene than ``scene`` (Beam runs cost more), with the same photo."""
    folder = tmp_path / "beam-src"
    folder.mkdir()
    data = np.round(smooth_bands(4, 300, 260, 100, 20000, seed=7)).astype(np.uint16)
    data[:, :, :12] = 0
    with rasterio.open(folder / "scene.tif", "w", driver="GTiff", width=260, height=300, count=4, dtype="uint16",
                       crs=CRS_UTM, transform=TRANSFORM, nodata=0, tiled=True, blockxsize=128, blockysize=128,
                       compress="deflate") as ds:
        ds.write(data)
    photo = np.round(smooth_bands(3, 90, 120, 0, 255, seed=6)).astype(np.uint8)
    with rasterio.open(folder / "photo.tif", "w", driver="GTiff", width=120, height=90, count=3,
                       dtype="uint8", photometric="RGB") as ds:
        ds.write(photo)
    return folder


def _archived_rows(archive) -> dict:
    return {r["id"]: r for r in open_archive(str(archive)).read(columns=list(COMPARED)).to_pylist()}


def test_beam_carries_a_large_raster_by_reference_and_archives_the_local_engines_row(beam_scene, tmp_path,
                                                                                   monkeypatch):
    beam = pytest.importorskip("apache_beam")
    from apache_beam.testing.util import assert_that

    from coldpress.pipelines.beam import ARCHIVED, IMAGES, EncodeImages, ReadImages, make_pipeline, pipeline_options

    monkeypatch.setattr(sources, "LARGE_SOURCE_BYTES", 100_000)  # scene.tif is large, photo.tif (33 kB) not
    sizes = {name: (beam_scene / name).stat().st_size for name in ("scene.tif", "photo.tif")}
    assert sizes["scene.tif"] >= 100_000 > sizes["photo.tif"]
    encode_local(str(beam_scene), str(tmp_path / "local"), codec="webp", bpp=2.0, progress=False)
    local = _archived_rows(tmp_path / "local")

    def carried_as_expected(carried):  # (key, what the element holds, its size as Beam encodes it)
        got = {key: (kind, size) for key, kind, size in carried}
        assert sorted(got) == ["photo.tif", "scene.tif"], got
        assert got["scene.tif"][0] == "SourceFile" and got["scene.tif"][1] < 1000, got  # not the file
        assert got["photo.tif"][0] == "bytes" and got["photo.tif"][1] >= sizes["photo.tif"], got  # small: bytes

    def rows_as_local(rows):
        got = {row["id"]: {k: row[k] for k in COMPARED} for row in rows}
        assert got == {rid: dict(row) for rid, row in local.items()}, sorted(got)

    with make_pipeline(pipeline_options(["--direct_num_workers=1"])) as p:
        read = p | ReadImages(str(beam_scene))
        coder = beam.coders.registry.get_coder(read[IMAGES].element_type)  # how the runner encodes the elements
        carried = read[IMAGES] | "What each element carries" >> beam.Map(
            lambda e, c: (e[0], type(e[2]).__name__, len(c.encode(e))), c=coder)
        assert_that(carried, carried_as_expected, label="Check the elements")
        encoded = read[IMAGES] | EncodeImages("webp", 2.0)
        assert_that(encoded[ARCHIVED], rows_as_local, label="Check the rows")


def test_encode_beam_archives_a_large_raster_from_an_fsspec_url_like_the_local_engine(beam_scene, tmp_path,
                                                                                     small_threshold):
    pytest.importorskip("apache_beam")
    import fsspec

    from coldpress.pipelines.beam import encode_beam

    fs = fsspec.filesystem("memory")
    for name in ("scene.tif", "photo.tif"):
        fs.pipe(f"/coldpress-large-beam/{name}", (beam_scene / name).read_bytes())
    try:
        manifest = encode_beam("memory://coldpress-large-beam", str(tmp_path / "beam"), codec="webp", bpp=2.0,
                               pipeline_args=["--direct_num_workers=1"], progress=False)
    finally:
        fs.rm("/coldpress-large-beam", recursive=True)
    assert manifest["archived"] == 2 and manifest["rejected"] == 0
    encode_local(str(beam_scene), str(tmp_path / "local"), codec="webp", bpp=2.0, progress=False)
    beam_rows = _archived_rows(tmp_path / "beam")
    assert beam_rows == _archived_rows(tmp_path / "local")
    assert beam_rows["scene.tif"]["mode"] == "RASTER"
