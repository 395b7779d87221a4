"""Geospatial rasters: read with rasterio (GDAL), code band groups tile by tile, restore to GeoTIFF.

Plain photographs go through Pillow (``transforms/read.py``). A source is archived as a *raster*
(``is_raster``) when GDAL opens it and it is georeferenced (a CRS, GCPs or RPCs), is JPEG 2000, has
more than 4 bands, or has several bands of a type other than uint8; ``transforms/records/encode.py`` also
tries GDAL on a file Pillow cannot open. A raster row has ``mode`` ``"RASTER"``, its ``metadata``
JSON holds everything a GIS needs under the key ``"raster"`` (``raster_metadata``), and its
``bitstream`` is a *raster package* (``CPRT``, docs/FORMAT.md):

- the raster is cut into a grid of tiles (``DEFAULT_TILE_SIZE`` = 1024 px a side, all tiles of
  nearly equal size, edges aligned to 16 px; a raster of up to 1.5 tiles a side is one tile), each
  coded independently, so a region decodes only the tiles it overlaps;
- in each tile the bands are coded in groups of three (bands 1-3, 4-6, ...) as RGB images by the
  row's codec, each group one normal coldpress container; a last group of one band is coded as L,
  one of two bands as RGB with the second band repeated;
- every band is mapped to the codec's 8-bit domain over its actual valid range (``lo`` = minimum,
  ``scale`` = (maximum - minimum) / 255, at least 1 for integer types; no value is clipped), and
  mapped back to the source data type on restore: ``v = lo + v8 * scale`` (rounded and clipped to
  the type for integers); uint8 bands whose range fits are exact identities of it;
- the valid-data mask (GDAL's dataset mask: nodata, internal mask or alpha; NaN for floats) is
  stored losslessly per tile (bit plane, zlib), plus a band's own mask where it differs; invalid
  pixels are filled smoothly (nearest valid value, blurred) before coding so the codec spends no
  bits on them, tiles with no valid pixel are not coded, and on restore invalid pixels become
  exactly the nodata value (a valid pixel that would decode to the nodata value is moved one unit
  away from it);
- the bytes of the target rate (``bpp`` counts all bands per spatial pixel) are shared among
  tiles by valid pixels and among groups by band cou

The package's modules, along its seams: ``detect`` (which sources are rasters, opening bytes with
GDAL), ``metadata`` (the row's ``raster`` metadata), ``tiling`` (tile grid, band groups, regions),
``mapping`` (8-bit mapping, fill, nodata), ``masks`` (lossless mask planes), ``package`` (the
``CPRT`` format and decoding it), ``encode`` (coding a dataset tile by tile) and ``writer``
(restored COG/GeoTIFF). Every name is importable from ``coldpress.transforms.raster``.
"""


from coldpress.transforms.raster.detect import (GDAL_CACHE_MB, RASTER_SUFFIXES, gdal_open_error, gdal_opens,
                                                georeferenced, is_photo_format, is_raster, looks_like_raster_file,
                                                open_bytes)
from coldpress.transforms.raster.encode import (SINGLE_BAND_WEIGHT, SUPPORTED_DTYPES, TILE_OVERLAP, EncodedRaster,
                                                check_dataset, encode_raster)
from coldpress.transforms.raster.mapping import coded_8bit
from coldpress.transforms.raster.masks import _pack_mask, _unpack_mask
from coldpress.transforms.raster.metadata import raster_metadata
from coldpress.transforms.raster.package import (RASTER_MAGIC, RASTER_MODE, RASTER_VERSION, Package, TileDecoder,
                                                 _tile_masks, coded_window,
                                                 decode_package, decode_region, decode_tile, is_package,
                                                 iter_tile_rows, pack_package, recon_sha256, tiles_in_window,
                                                 unpack_package)
from coldpress.transforms.raster.tiling import DEFAULT_TILE_SIZE, GROUP_SIZE, band_groups, resolve_window, tile_grid
from coldpress.transforms.raster.writer import write_raster

__all__ = [
    "DEFAULT_TILE_SIZE", "GDAL_CACHE_MB", "GROUP_SIZE", "RASTER_MAGIC", "RASTER_MODE", "RASTER_SUFFIXES",
    "RASTER_VERSION", "SINGLE_BAND_WEIGHT", "SUPPORTED_DTYPES", "TILE_OVERLAP", "EncodedRaster", "Package",
    "TileDecoder", "band_groups", "coded_window",
    "check_dataset", "coded_8bit", "decode_package", "decode_region", "decode_tile", "encode_raster",
    "gdal_open_error", "gdal_opens", "georeferenced", "is_package", "is_photo_format", "is_raster",
    "iter_tile_rows", "looks_like_raster_file", "open_bytes", "pack_package", "raster_metadata", "recon_sha256",
    "resolve_window", "tile_grid", "tiles_in_window", "unpack_package", "write_raster",
    "_pack_mask", "_tile_masks", "_unpack_mask",
]
