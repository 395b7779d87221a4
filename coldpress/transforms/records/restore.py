"""Archive row in, file out: ``restore_record`` (photos as image files, rasters as GeoTIFFs with
their georeferencing), and the raster restores of a region (``decode_region_record``, ``raster_file_bytes``)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from coldpress.codec.limits import loads_bounded
from coldpress.errors import BitstreamError, ColdpressError
from coldpress.transforms import raster
from coldpress.transforms.records.decode import (
    _refuse_diffusion_raster,
    checked_bitstream,
    decode_record,
    decoder_provenance,
    is_raster_row,
)
from coldpress.transforms.records.atomic_write import write_file_bytes
from coldpress.transforms.records.image_files import _output_format, image_bytes, write_image
from coldpress.transforms.records.names import with_extension

_RASTER_DRIVERS = {"auto": "COG", "geotiff": "COG", "cog": "COG", "tiff": "GTiff", "tif": "GTiff"}


def restore_record(
    row: Mapping[str, Any],
    target: str,
    fmt: str = "auto",
    storage_options: dict[str, Any] | None = None,
    *,
    region: Mapping[str, Any] | None = None,
    decoder: Any = None,
) -> str:
    """Decode one archive row into the file ``target``; return the path written.

    Photos: ``write_image`` in ``fmt`` ("auto": PNG). Rasters: with "auto", "geotiff" or "cog" a Cloud
    Optimized GeoTIFF (the target's extension becomes .tif), with "tiff" a tiled GeoTIFF, both with the
    source's CRS, transform, bands, dtype, nodata, descriptions and tags; other formats get the 8-bit
    coded view of bands 1-3. ``region`` ({"window": (col, row, w, h)} or {"bbox": (minx, miny, maxx,
    maxy), "bbox_crs": "EPSG:4326"}) restores only that part of a raster, georeferenced, decoding only
    the tiles it overlaps. ``decoder`` (a ``DecoderChoice`` or its fields; photos only) picks the
    diffusion decoder, recorded in the file (``image_bytes``'s provenance).
    """
    fmt = str(fmt or "auto").lower()
    if not is_raster_row(row):
        if region:
            raise ColdpressError(
                f"{row.get('id')!r} is a photo, not a georeferenced raster: --window and --bbox restore regions "
                "of rasters only; restore it whole (drop --window/--bbox)"
            )
        write_image(decode_record(row, decoder), target, fmt, storage_options, decoder_provenance(decoder))
        return str(target)
    _refuse_diffusion_raster(row, decoder)
    pkg = raster.unpack_package(checked_bitstream(row))
    meta = _raster_meta(row)
    ext, data = _raster_file(pkg, meta, fmt, region)
    target = with_extension(target, ext)
    write_file_bytes(data, target, storage_options)
    return str(target)


def _raster_meta(row: Mapping[str, Any]) -> dict[str, Any]:
    try:
        meta = loads_bounded(row.get("metadata") or "{}", "the row's metadata")["raster"]
        if not isinstance(meta, dict):
            raise TypeError("not an object")
        return meta
    except (ValueError, KeyError, TypeError):
        raise BitstreamError(
            f"archive row {row.get('id')!r} holds a raster but its metadata lacks the 'raster' description "
            "(CRS, transform); the row is damaged: re-encode the source"
        ) from None


def _raster_file(pkg: "raster.Package", meta: dict[str, Any], fmt: str, region: Mapping[str, Any] | None
                 ) -> tuple[str, bytes]:
    window = raster.resolve_window(meta, **dict(region)) if region else None
    driver = _RASTER_DRIVERS.get(fmt)
    if driver is None:
        pixels, _ = raster.decode_region(pkg, window)
        return _output_format(fmt)[1], image_bytes(raster.coded_8bit(pixels, pkg.header), fmt)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="coldpress-restore-") as tmp:
        local = os.path.join(tmp, "out.tif")
        raster.write_raster(pkg, meta, local, driver=driver, window=window)
        with open(local, "rb") as f:
            return "tif", f.read()


def raster_file_bytes(row: Mapping[str, Any], fmt: str = "auto", region: Mapping[str, Any] | None = None
                      ) -> tuple[str, bytes]:
    """(file extension, file content) of a raster row restored as ``restore_record`` writes it (a
    region of it with ``region``): what the warm restore service sends back for rasters."""
    return _raster_file(raster.unpack_package(checked_bitstream(row)), _raster_meta(row), str(fmt or "auto").lower(),
                        region)


def decode_region_record(row: Mapping[str, Any], region: Mapping[str, Any] | None = None,
                         decoder: Any = None) -> np.ndarray:
    """``decode_record`` of a row (through ``decoder``), or of only a region of a raster (decoding the
    tiles it overlaps)."""
    if not region:
        return decode_record(row, decoder)
    if not is_raster_row(row):
        raise ColdpressError(
            f"{row.get('id')!r} is a photo, not a georeferenced raster: --window and --bbox restore regions "
            "of rasters only; restore it whole (drop --window/--bbox)"
        )
    pkg = raster.unpack_package(checked_bitstream(row))
    window = raster.resolve_window(_raster_meta(row), **dict(region))
    return raster.decode_region(pkg, window)[0]
