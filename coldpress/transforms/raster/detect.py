"""Which sources are rasters, and opening a file's bytes with GDAL (rasterio)."""

from __future__ import annotations

import contextlib
import logging

#: File name endings restored as GeoTIFF by the automatic restore format.
RASTER_SUFFIXES = (".tif", ".tiff", ".gtif", ".jp2", ".j2k", ".img", ".vrt", ".ntf", ".nc", ".hdf", ".h5")
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JP2_MAGICS = (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")
#: GDAL's block cache while reading and writing rasters, in MB (GDAL's default, 5 % of the RAM, would
#: hold a large scene's decoded blocks: memory is bounded by the tile, not the cache).
GDAL_CACHE_MB = 64

logging.getLogger("rasterio._env").setLevel(logging.ERROR)  # GDAL's warnings on odd but readable TIFFs


def _rio():
    import rasterio  # imported lazily: `import coldpress` stays light

    return rasterio


@contextlib.contextmanager
def open_bytes(data):
    """A rasterio dataset of a file's bytes (GDAL's in-memory file system), or of a large source left
    where it is (``sources.SourceFile``: a local path GDAL opens itself, or an fsspec file it reads
    through rasterio's ``opener``), read window by window."""
    from coldpress.transforms.sources import SourceFile

    rasterio = _rio()
    with rasterio.Env(GDAL_PAM_ENABLED="NO", GDAL_CACHEMAX=GDAL_CACHE_MB):
        if isinstance(data, SourceFile):
            from fsspec.implementations.local import LocalFileSystem

            fs, path = data.filesystem()
            with (rasterio.open(path) if isinstance(fs, LocalFileSystem) else rasterio.open(path, opener=fs.open)) as ds:
                yield ds
            return
        with rasterio.MemoryFile(bytes(data)) as mem:
            with mem.open() as ds:
                yield ds


def looks_like_raster_file(data: bytes) -> bool:
    """TIFF or JPEG 2000 by its first bytes: the files ``is_raster`` opens with GDAL."""
    head = bytes(data[:12])
    return head.startswith(_TIFF_MAGICS) or head.startswith(_JP2_MAGICS)


def is_photo_format(data: bytes) -> bool:
    """PNG, JPEG, GIF, BMP or WebP by its first bytes: files Pillow reads, never handed to GDAL."""
    head = bytes(data[:12])
    return head.startswith((b"\x89PNG", b"\xff\xd8", b"GIF8", b"BM")) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def georeferenced(ds) -> bool:
    gcps, _ = ds.gcps
    return ds.crs is not None or bool(gcps) or bool(ds.rpcs) or not ds.transform.is_identity


def is_raster(data: bytes) -> bool:
    """Whether ``data`` is archived as a raster rather than a photo (see the module docstring)."""
    if not looks_like_raster_file(data):
        return False
    try:
        with open_bytes(data) as ds:
            if ds.count == 0:
                return bool(ds.subdatasets)
            jp2 = bytes(data[:12]).startswith(_JP2_MAGICS)
            return jp2 or georeferenced(ds) or ds.count > 4 or (ds.count > 1 and ds.dtypes[0] != "uint8")
    except Exception:  # noqa: BLE001 - GDAL cannot open it: Pillow decides (and gives the reason)
        return False


def gdal_open_error(data: bytes) -> str | None:
    """None when GDAL opens ``data`` as a raster, else what GDAL said."""
    try:
        with open_bytes(data) as ds:
            return None if ds.count > 0 or ds.subdatasets else "no raster band"
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


def gdal_opens(data: bytes) -> bool:
    return gdal_open_error(data) is None
