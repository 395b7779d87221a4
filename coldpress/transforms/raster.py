"""Geospatial rasters: read with rasterio (GDAL), code band groups tile by tile, restore to GeoTIFF.

Plain photographs go through Pillow (``transforms/read.py``). A source is archived as a *raster*
(``is_raster``) when GDAL opens it and it is georeferenced (a CRS, GCPs or RPCs), is JPEG 2000, has
more than 4 bands, or has several bands of a type other than uint8; ``transforms/records.py`` also
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
  tiles by valid pixels and among groups by band count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from coldpress.codec.container import read_varint, varint
from coldpress.errors import BitstreamError, ColdpressError, InputRejected, RateUnreachableError

RASTER_MAGIC = b"CPRT"
RASTER_VERSION = 1
#: ``mode`` column of raster rows.
RASTER_MODE = "RASTER"
#: Side of a tile of the raster package, in pixels.
DEFAULT_TILE_SIZE = 1024
#: Bands coded together as one RGB image.
GROUP_SIZE = 3
#: Share of a tile's bytes that a last group of one band gets, in bands (a group of k bands gets k):
#: a codec codes one band as an RGB image of three equal channels, which costs more than a third
#: (2.0 vs 1.0 with the learned codec at 0.1 bpp: NAIP RGBN near-infrared +0.8 to +1.5 dB for -0.2 to
#: -0.4 dB on RGB, every band then above JPEG 2000 at the same bytes; results/raster/).
SINGLE_BAND_WEIGHT = 2.0
#: File name endings restored as GeoTIFF by the automatic restore format.
RASTER_SUFFIXES = (".tif", ".tiff", ".gtif", ".jp2", ".j2k", ".img", ".vrt", ".ntf", ".nc", ".hdf", ".h5")
#: Data types mapped to 8 bits (complex types are rejected).
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
#: Metadata domains not written back: they describe the source file's layout or are written otherwise.
_SKIPPED_DOMAINS = {"IMAGE_STRUCTURE", "DERIVED_SUBDATASETS", "SUBDATASETS", "RPC", "GEOLOCATION"}
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JP2_MAGICS = (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")
#: GDAL's block cache while reading and writing rasters, in MB (GDAL's default, 5 % of the RAM, would
#: hold a large scene's decoded blocks: memory is bounded by the tile, not the cache).
GDAL_CACHE_MB = 64
_LEN_PLACEHOLDER = 10**7 - 1  # header estimate: every blob length written with 7 digits

logging.getLogger("rasterio._env").setLevel(logging.ERROR)  # GDAL's warnings on odd but readable TIFFs


def _rio():
    import rasterio  # imported lazily: `import coldpress` stays light

    return rasterio


@contextlib.contextmanager
def open_bytes(data: bytes):
    """A rasterio dataset of a file's bytes (GDAL's in-memory file system)."""
    rasterio = _rio()
    with rasterio.Env(GDAL_PAM_ENABLED="NO", GDAL_CACHEMAX=GDAL_CACHE_MB):
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


# -- metadata -------------------------------------------------------------------------------------
def _json_number(v: Any) -> Any:
    """A JSON value of a number that may be NaN or infinite ("nan", "inf", "-inf")."""
    if v is None:
        return None
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return int(v) if v.is_integer() and abs(v) < 2**53 else v


def _from_json_number(v: Any) -> float | None:
    if v is None:
        return None
    return float(v)  # float("nan") / float("inf") read the strings back


def _tags(ds, bidx: int = 0) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    default = ds.tags(bidx) if bidx else ds.tags()
    if default:
        out[""] = dict(default)
    try:
        domains = ds.tag_namespaces(bidx) if bidx else ds.tag_namespaces()
    except Exception:  # noqa: BLE001
        domains = []
    for ns in domains or []:
        if ns in ("", "DERIVED_SUBDATASETS"):
            continue
        try:
            tags = ds.tags(bidx, ns=ns) if bidx else ds.tags(ns=ns)
        except Exception:  # noqa: BLE001
            continue
        if tags:
            out[ns] = dict(tags)
    return out


def raster_metadata(ds) -> dict[str, Any]:
    """JSON-able description of a dataset: everything a restored file needs to replace it in a GIS."""
    crs = ds.crs
    gcps, gcps_crs = ds.gcps
    md: dict[str, Any] = {
        "driver": ds.driver,
        "width": ds.width,
        "height": ds.height,
        "count": ds.count,
        "dtype": ds.dtypes[0],
        "crs": crs.to_wkt() if crs else None,
        "crs_code": crs.to_string() if crs else None,
        "epsg": crs.to_epsg() if crs else None,
        "transform": [float(x) for x in tuple(ds.transform)[:6]],
        "bounds": [float(x) for x in ds.bounds],
        "res": [float(x) for x in ds.res],
        "nodata": _json_number(ds.nodata),
        "nodatavals": [_json_number(v) for v in ds.nodatavals],
        "descriptions": list(ds.descriptions),
        "colorinterp": [ci.name for ci in ds.colorinterp],
        "scales": [float(v) for v in ds.scales],
        "offsets": [float(v) for v in ds.offsets],
        "units": [u or None for u in ds.units],
        "tags": _tags(ds),
        "band_tags": [_tags(ds, b) for b in ds.indexes],
        "overviews": ds.overviews(1) if ds.count else [],
        "mask_flags": [[f.name for f in flags] for flags in ds.mask_flag_enums],
        "block_shapes": [list(s) for s in ds.block_shapes],
        "compression": ds.compression.name if ds.compression else None,
        "interleave": ds.interleaving.name if ds.interleaving else None,
        "photometric": ds.photometric.name if ds.photometric else None,
    }
    if gcps:
        md["gcps"] = {
            "crs": gcps_crs.to_wkt() if gcps_crs else None,
            "points": [[g.row, g.col, g.x, g.y, g.z, g.id, g.info] for g in gcps],
        }
    if ds.rpcs:
        md["rpcs"] = ds.rpcs.to_dict()
    try:
        md["colormap"] = {str(k): list(v) for k, v in ds.colormap(1).items()}
    except Exception:  # noqa: BLE001 - no palette
        pass
    return md


# -- tiling, masks, mapping -----------------------------------------------------------------------
def _splits(size: int, tile: int) -> list[int]:
    """Tile edges along one axis: nearly equal tiles of about ``tile`` px, inner edges on 16 px."""
    n = max(1, int(round(size / tile)))
    edges = [0]
    for i in range(1, n):
        edge = int(round(i * size / n / 16.0)) * 16
        if edge > edges[-1]:
            edges.append(edge)
    edges.append(size)
    return edges


def tile_grid(width: int, height: int, tile: int = DEFAULT_TILE_SIZE) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of every tile, row by row."""
    xs, ys = _splits(width, tile), _splits(height, tile)
    return [(x0, y0, x1 - x0, y1 - y0) for y0, y1 in zip(ys, ys[1:]) for x0, x1 in zip(xs, xs[1:])]


def band_groups(count: int) -> list[list[int]]:
    """Band indexes (0-based) of each coded group: threes, then the one or two left."""
    return [list(range(i, min(i + GROUP_SIZE, count))) for i in range(0, count, GROUP_SIZE)]


def _zigzag(n: int) -> int:
    return (n << 1) if n >= 0 else ((-n << 1) - 1)


def _pack_mask(valid: np.ndarray) -> bytes:
    """Lossless code of a boolean plane: per row, the columns where the value changes (the row starts
    False), as gaps within the row or, when the row has as many changes as the row above, as
    zigzag differences from that row's; unsigned LEB128 varints, then zlib level 9."""
    valid = np.asarray(valid, bool)
    h, w = valid.shape
    change = np.diff(np.concatenate([np.zeros((h, 1), np.int8), valid.astype(np.int8)], axis=1), axis=1) != 0
    rows, cols = np.nonzero(change)
    per_row = np.split(cols, np.cumsum(np.bincount(rows, minlength=h))[:-1])
    out = bytearray()
    prev: list[int] = []
    for r in range(h):
        cur = per_row[r].tolist()
        same = bool(cur) and len(cur) == len(prev)
        out += varint(len(cur) * 2 + int(same))
        if same:
            for c, p in zip(cur, prev):
                out += varint(_zigzag(c - p))
        else:
            last = 0
            for c in cur:
                out += varint(c - last)
                last = c
        prev = cur
    return zlib.compress(bytes(out), 9)


def _unpack_mask(blob: bytes, h: int, w: int) -> np.ndarray:
    try:
        raw = zlib.decompress(blob)
    except zlib.error as exc:
        raise BitstreamError(f"a mask of this raster package does not decode ({exc}); restore the archive from a replica") from None
    toggles = np.zeros((h, w + 1), np.int8)
    pos = 0
    prev: list[int] = []
    try:
        for r in range(h):
            n, pos = read_varint(raw, pos, "this raster package")
            count, same = n >> 1, n & 1
            cur = []
            last = 0
            for k in range(count):
                v, pos = read_varint(raw, pos, "this raster package")
                if same:
                    cur.append(prev[k] + ((v >> 1) if not v & 1 else -((v + 1) >> 1)))
                else:
                    last += v
                    cur.append(last)
            toggles[r, cur] = 1
            prev = cur
    except (IndexError, BitstreamError):
        raise BitstreamError("a mask of this raster package is truncated or corrupt; restore the archive from a replica") from None
    return (np.cumsum(toggles[:, :w], axis=1) % 2).astype(bool)


def _fill_invalid(plane: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``plane`` (float) with its invalid pixels replaced by a smooth continuation of the valid ones."""
    if valid.all():
        return plane
    if not valid.any():
        return np.zeros_like(plane)
    from scipy import ndimage

    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    nearest = plane[idx[0], idx[1]]
    smooth = ndimage.gaussian_filter(nearest, sigma=4.0, mode="nearest")
    return np.where(valid, plane, smooth)


def _int_info(dtype: np.dtype) -> tuple[float, float] | None:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return None


def _band_map(lo: float, hi: float, dtype: np.dtype) -> tuple[float, float]:
    """(lo, scale) of one band: 8-bit value v8 stands for lo + v8 * scale."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:  # no valid pixel
        return 0.0, 1.0
    span = hi - lo
    if np.issubdtype(dtype, np.integer):
        return lo, max(1.0, span / 255.0)
    return lo, (span / 255.0) if span > 0 else 1.0


def _to8(band: np.ndarray, lo: float, scale: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        v = (band.astype(np.float64) - lo) / scale
    return np.clip(np.nan_to_num(v, nan=0.0, posinf=255.0, neginf=0.0), 0.0, 255.0)


def _from8(v8: np.ndarray, lo: float, scale: float, dtype: np.dtype) -> np.ndarray:
    v = lo + v8.astype(np.float64) * scale
    bounds = _int_info(dtype)
    if bounds is not None:
        return np.clip(np.round(v), bounds[0], bounds[1]).astype(dtype)
    return v.astype(dtype)


def _apply_validity(tile: np.ndarray, valid: np.ndarray, b: int, nodata: float | None, fill: float) -> None:
    """Set band ``b``'s invalid pixels to the nodata (or fill) value; keep valid ones off it."""
    band = tile[:, :, b]
    if nodata is not None and not math.isnan(nodata):
        hit = valid & (band == np.asarray(nodata).astype(band.dtype))
        if hit.any():
            bounds = _int_info(band.dtype)
            if bounds is not None:
                step = 1 if nodata < bounds[1] else -1
                band[hit] = np.asarray(nodata + step).astype(band.dtype)
            else:
                band[hit] = np.nextafter(band.dtype.type(nodata), band.dtype.type(np.inf))
    band[~valid] = np.asarray(fill).astype(band.dtype)


# -- the package ----------------------------------------------------------------------------------
def pack_package(header: dict[str, Any], blobs: list[bytes]) -> bytes:
    head = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    body = bytes([RASTER_VERSION]) + varint(len(head)) + head + b"".join(blobs)
    data = RASTER_MAGIC + body
    return data + struct.pack(">I", zlib.crc32(data) & 0xFFFFFFFF)


def is_package(data: bytes) -> bool:
    return bytes(data[:4]) == RASTER_MAGIC


@dataclass
class Package:
    header: dict[str, Any]
    data: bytes
    #: Per tile: {"mask": (off, len), "band_masks": {b: (off, len)}, "parts": [(off, len), ...]}.
    spans: list[dict[str, Any]]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.header["dtype"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.header["height"], self.header["width"], self.header["bands"]


def unpack_package(data: bytes) -> Package:
    data = bytes(data)
    if not is_package(data):
        raise BitstreamError("this is not a coldpress raster package (magic CPRT); the archive row is corrupt")
    if len(data) < 10:
        raise BitstreamError("this raster package is truncated; restore it from a replica")
    if struct.unpack(">I", data[-4:])[0] != zlib.crc32(data[:-4]) & 0xFFFFFFFF:
        raise BitstreamError("this raster package fails its CRC32 check; it is corrupt: restore the archive from a replica")
    version = data[4]
    if version > RASTER_VERSION:
        raise BitstreamError(f"raster package version {version} is newer than this coldpress reads ({RASTER_VERSION}); upgrade coldpress")
    n, pos = read_varint(data, 5, "this raster package")
    try:
        header = json.loads(data[pos:pos + n])
    except ValueError as exc:
        raise BitstreamError(f"the header of this raster package does not parse ({exc}); restore it from a replica") from None
    pos += n
    spans = []
    for t in header["tiles"]:
        entry: dict[str, Any] = {}
        entry["mask"] = (pos, t["mask"])
        pos += t["mask"]
        entry["band_masks"] = {}
        for b, length in sorted(((int(k), v) for k, v in t.get("band_masks", {}).items())):
            entry["band_masks"][b] = (pos, length)
            pos += length
        entry["parts"] = []
        for length in t["parts"]:
            entry["parts"].append((pos, length))
            pos += length
        spans.append(entry)
    if pos != len(data) - 4:
        raise BitstreamError("the tile index of this raster package does not match its length; restore it from a replica")
    return Package(header=header, data=data, spans=spans)


def _tile_masks(pkg: Package, ti: int) -> tuple[np.ndarray | None, dict[int, np.ndarray]]:
    t = pkg.header["tiles"][ti]
    h, w = t["h"], t["w"]
    off, length = pkg.spans[ti]["mask"]
    mask = _unpack_mask(pkg.data[off:off + length], h, w) if length else None
    base = mask if mask is not None else np.ones((h, w), bool)
    band_masks = {b: base ^ _unpack_mask(pkg.data[o:o + n], h, w) for b, (o, n) in pkg.spans[ti]["band_masks"].items()}
    return mask, band_masks


def decode_tile(pkg: Package, ti: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(pixels (h, w, bands) in the source dtype, dataset valid mask or None when all valid) of tile ``ti``."""
    from coldpress.codec.registry import decode_bitstream

    hd = pkg.header
    t = hd["tiles"][ti]
    h, w, nb = t["h"], t["w"], hd["bands"]
    dtype = pkg.dtype
    nodata = _from_json_number(hd.get("nodata"))
    fill = _from_json_number(hd.get("fill")) or 0.0
    mask, band_masks = _tile_masks(pkg, ti)
    out = np.empty((h, w, nb), dtype)
    for group, (off, length) in zip(hd["groups"], pkg.spans[ti]["parts"]):
        if length == 0:
            v8 = np.zeros((h, w, len(group)))
        else:
            pixels = decode_bitstream(pkg.data[off:off + length])
            if pixels.shape[:2] != (h, w):
                raise BitstreamError(f"a tile of this raster package decodes to {pixels.shape[:2]}, not {(h, w)}; it is corrupt")
            v8 = pixels[:, :, None] if pixels.ndim == 2 else pixels
        for j, b in enumerate(group):
            lo, scale = hd["map"][b]
            out[:, :, b] = _from8(v8[:, :, j], lo, scale, dtype)
    valid_all = mask if mask is not None else np.ones((h, w), bool)
    if mask is not None or band_masks:
        for b in range(nb):
            _apply_validity(out, band_masks.get(b, valid_all), b, nodata, fill)
    elif nodata is not None:
        for b in range(nb):
            _apply_validity(out, valid_all, b, nodata, fill)
    return out, mask


def tiles_in_window(pkg: Package, window: tuple[int, int, int, int]) -> list[int]:
    col, row, w, h = window
    return [i for i, t in enumerate(pkg.header["tiles"])
            if t["x"] < col + w and col < t["x"] + t["w"] and t["y"] < row + h and row < t["y"] + t["h"]]


def iter_tile_rows(pkg: Package) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """(row offset, pixels (h, W, bands), valid mask or None) of each row of tiles, top to bottom."""
    rows: dict[int, list[int]] = {}
    for i, t in enumerate(pkg.header["tiles"]):
        rows.setdefault(t["y"], []).append(i)
    for y in sorted(rows):
        parts = [decode_tile(pkg, i) for i in sorted(rows[y], key=lambda i: pkg.header["tiles"][i]["x"])]
        pixels = np.concatenate([p for p, _ in parts], axis=1)
        masks = None
        if any(m is not None for _, m in parts):
            masks = np.concatenate([m if m is not None else np.ones(p.shape[:2], bool) for p, m in parts], axis=1)
        yield y, pixels, masks


def decode_package(data: bytes, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The raster of a package, (H, W, bands) in the source dtype; with ``window`` (col, row,
    width, height) only that region, decoding only the tiles it overlaps."""
    pkg = unpack_package(data)
    return decode_region(pkg, window)[0]


def decode_region(pkg: Package, window: tuple[int, int, int, int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    H, W, nb = pkg.shape
    col, row, w, h = window or (0, 0, W, H)
    out = np.empty((h, w, nb), pkg.dtype)
    mask = None
    for i in tiles_in_window(pkg, (col, row, w, h)):
        t = pkg.header["tiles"][i]
        pixels, m = decode_tile(pkg, i)
        x0, y0 = max(col, t["x"]), max(row, t["y"])
        x1, y1 = min(col + w, t["x"] + t["w"]), min(row + h, t["y"] + t["h"])
        src = (slice(y0 - t["y"], y1 - t["y"]), slice(x0 - t["x"], x1 - t["x"]))
        dst = (slice(y0 - row, y1 - row), slice(x0 - col, x1 - col))
        out[dst] = pixels[src]
        if m is not None:
            if mask is None:
                mask = np.ones((h, w), bool)
            mask[dst] = m[src]
    return out, mask


def recon_sha256(pkg: Package) -> str:
    """sha256 of the decoded raster's bytes, (H, W, bands) in C order, computed a row of tiles at a time
    (equal to ``records.pixels_sha256(decode_package(...))``)."""
    h = hashlib.sha256()
    for _, pixels, _ in iter_tile_rows(pkg):
        h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


# -- encoding -------------------------------------------------------------------------------------
@dataclass
class EncodedRaster:
    package: bytes
    width: int
    height: int
    metadata: dict[str, Any]  # the "raster" metadata
    quality: dict[str, Any]  # per-band RMSE and PSNR (original units), overall PSNR, bits per band-pixel
    recon_sha256: str
    codec_params: list[Any]


def _reject(source: str, what: str, todo: str) -> InputRejected:
    return InputRejected(f"{source}: {what}; {todo}")


def check_dataset(ds, source: str, max_pixels: int) -> None:
    """Reject what cannot be archived as a raster, saying what to do."""
    if ds.count == 0:
        if ds.subdatasets:
            names = ", ".join(ds.subdatasets[:4])
            raise _reject(source, f"the file holds {len(ds.subdatasets)} subdatasets ({names}) and no bands of its "
                          "own, and subdatasets may have different sizes and grids",
                          "export each subdataset to its own GeoTIFF (gdal_translate SUBDATASET out.tif) and archive those")
        raise _reject(source, "GDAL opens the file but finds no raster band in it", "check that it is a raster image")
    pages = [s for s in (ds.subdatasets or []) if s.startswith("GTIFF_DIR:")]
    if pages:
        raise _reject(source, f"the TIFF holds {len(pages) + 1} images (pages) whose bands may differ in size",
                      "write each page to its own GeoTIFF (gdal_translate GTIFF_DIR:N:file.tif page_N.tif) and archive those")
    dtypes = set(ds.dtypes)
    if len(dtypes) > 1:
        raise _reject(source, f"its bands have different data types ({', '.join(sorted(dtypes))})",
                      "convert them to one type (gdal_translate -ot TYPE) and archive the result")
    dtype = ds.dtypes[0]
    if dtype not in SUPPORTED_DTYPES:
        raise _reject(source, f"its bands are of type {dtype}, which has no mapping to the codec's 8-bit samples "
                      f"(supported: {', '.join(SUPPORTED_DTYPES)})",
                      "convert it, e.g. to amplitude as float32 (gdal_calc, or gdal_translate -ot Float32), first")
    if ds.width * ds.height > max_pixels:
        raise _reject(source, f"raster is {ds.width}x{ds.height} = {ds.width * ds.height:,} pixels, above the limit of "
                      f"{max_pixels:,}", "split it into smaller scenes, or raise the pixel limit (max_pixels)")
    if ds.width < 1 or ds.height < 1:
        raise _reject(source, f"raster has zero size ({ds.width}x{ds.height})", "remove it from SRC")


def _read_tile(ds, win_tuple, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data (bands, h, w), dataset valid (h, w), band valid (bands, h, w)) of one tile window."""
    from rasterio.windows import Window

    x, y, w, h = win_tuple
    win = Window(x, y, w, h)
    try:
        data = ds.read(window=win)
        band_valid = ds.read_masks(window=win) > 0
        dataset_valid = ds.dataset_mask(window=win) > 0
    except Exception as exc:  # noqa: BLE001 - GDAL's read errors: a truncated or corrupt file
        raise _reject(source, f"GDAL could not read the pixels of window {win_tuple} ({type(exc).__name__}: {exc}); "
                      "the file is truncated or corrupt", "copy it again from its origin (gdalinfo -checksum shows "
                      "where it breaks), or remove it from SRC") from None
    if np.issubdtype(data.dtype, np.floating):
        band_valid &= np.isfinite(data)
    dataset_valid &= band_valid.any(axis=0)
    return data, dataset_valid, band_valid


def encode_raster(data: bytes, source: str, codec, bpp: float, *, tile_size: int = DEFAULT_TILE_SIZE,
                  max_pixels: int = 178_956_970) -> EncodedRaster:
    """Encode the raster file ``data`` (named ``source`` in messages) at ``bpp`` bits per spatial pixel."""
    try:
        ctx = open_bytes(data)
        ds = ctx.__enter__()
    except Exception as exc:  # noqa: BLE001
        raise _reject(source, f"GDAL cannot open it as a raster ({type(exc).__name__}: {exc})",
                      "check that it is a complete GeoTIFF, COG or JPEG 2000 file (gdalinfo shows what is wrong)") from None
    try:
        check_dataset(ds, source, max_pixels)
        return _encode_dataset(ds, source, codec, bpp, tile_size)
    finally:
        ctx.__exit__(None, None, None)


def _encode_dataset(ds, source: str, codec, bpp: float, tile_size: int) -> EncodedRaster:
    W, H, nb = ds.width, ds.height, ds.count
    dtype = np.dtype(ds.dtypes[0])
    meta = raster_metadata(ds)
    tiles = tile_grid(W, H, tile_size)
    groups = band_groups(nb)
    nodata = ds.nodata
    fill = nodata if nodata is not None else (float("nan") if np.issubdtype(dtype, np.floating) else 0.0)

    # Pass 1: masks and each band's valid range, a tile at a time.
    lo = np.full(nb, np.inf)
    hi = np.full(nb, -np.inf)
    mask_blobs: list[bytes] = []
    band_mask_blobs: list[dict[str, bytes]] = []
    valid_counts: list[int] = []
    for win in tiles:
        band, valid, band_valid = _read_tile(ds, win, source)
        for b in range(nb):
            if band_valid[b].any():
                vals = band[b][band_valid[b]]
                lo[b] = min(lo[b], float(vals.min()))
                hi[b] = max(hi[b], float(vals.max()))
        mask_blobs.append(b"" if valid.all() else _pack_mask(valid))
        band_mask_blobs.append({str(b): _pack_mask(band_valid[b] ^ valid) for b in range(nb)
                                if not np.array_equal(band_valid[b], valid)})
        valid_counts.append(int(valid.sum()))
    maps = [_band_map(lo[b], hi[b], dtype) for b in range(nb)]

    def header(parts: list[list[int]]) -> dict[str, Any]:
        return {
            "width": W, "height": H, "bands": nb, "dtype": dtype.name, "groups": groups,
            "map": [[float(a), float(s)] for a, s in maps], "nodata": _json_number(nodata),
            "fill": _json_number(fill), "tile_size": tile_size, "codec": codec.name,
            "tiles": [{"x": x, "y": y, "w": w, "h": h, "mask": len(mask_blobs[i]),
                       **({"band_masks": {k: len(v) for k, v in band_mask_blobs[i].items()}} if band_mask_blobs[i] else {}),
                       "parts": parts[i]} for i, (x, y, w, h) in enumerate(tiles)],
        }

    total = int(bpp * W * H / 8)
    estimate = len(pack_package(header([[_LEN_PLACEHOLDER] * len(groups) for _ in tiles]), []))
    fixed = estimate + sum(len(m) for m in mask_blobs) + sum(len(v) for d in band_mask_blobs for v in d.values())
    available = total - fixed
    weights = [max(c, 0.1 * w * h) if c else 0.0 for c, (_, _, w, h) in zip(valid_counts, tiles)]
    if available <= 0:
        raise RateUnreachableError(
            f"{source}: the raster package's tile index and masks take {fixed} bytes, more than the {total} bytes of "
            f"{bpp} bpp on this {W}x{H} raster; raise --bpp to at least {8 * (fixed + 64 * len(tiles)) / (W * H):.3g}")

    # Pass 2: map, fill, code and verify each tile; accumulate the error per band.
    sq = np.zeros(nb)
    n_valid = np.zeros(nb)
    tile_parts: list[list[bytes]] = []
    params: list[Any] = []
    decoded_rows: dict[int, list[tuple[int, np.ndarray]]] = {}
    sha = hashlib.sha256()
    wsum = sum(weights) or 1.0
    for i, win in enumerate(tiles):
        x, y, w, h = win
        parts: list[bytes] = []
        tile_params: list[Any] = []
        if weights[i]:  # a tile with no valid pixel is not coded
            band, valid, band_valid = _read_tile(ds, win, source)
            tile_bytes = available * weights[i] / wsum
            coded = _code_groups(codec, band, band_valid, maps, groups, tile_bytes, (i, w, h), source, bpp)
            parts = [c[0] for c in coded]
            tile_params = [c[1] for c in coded]
        tile_parts.append(parts)
        params.append(tile_params or None)
        # Verify: decode this tile from what was just written, as a restore will.
        recon, _ = _decode_new_tile(header, i, tiles, len(groups), mask_blobs[i], band_mask_blobs[i], parts)
        if weights[i]:
            for b in range(nb):
                v = band_valid[b]
                if v.any():
                    d = band[b][v].astype(np.float64) - recon[:, :, b][v].astype(np.float64)
                    sq[b] += float(np.dot(d, d))
                    n_valid[b] += v.sum()
        decoded_rows.setdefault(y, []).append((x, recon))
        if x + w == W:  # row of tiles complete: hash it
            row_tiles = sorted(decoded_rows.pop(y), key=lambda item: item[0])
            sha.update(np.ascontiguousarray(np.concatenate([r for _, r in row_tiles], axis=1)).tobytes())

    blobs: list[bytes] = []
    parts_len = []
    for i in range(len(tiles)):
        blobs.append(mask_blobs[i])
        blobs.extend(band_mask_blobs[i][k] for k in sorted(band_mask_blobs[i], key=int))
        blobs.extend(tile_parts[i])
        parts_len.append([len(p) for p in tile_parts[i]] or [0] * len(groups))
    package = pack_package(header(parts_len), blobs)
    if len(package) > total:
        raise RateUnreachableError(f"{source}: the raster package came to {len(package)} bytes for a {total}-byte budget "
                                   f"({bpp} bpp); raise --bpp")
    quality = _quality(sq, n_valid, lo, hi, dtype, len(package), W, H, nb)
    return EncodedRaster(package=package, width=W, height=H, metadata=meta, quality=quality,
                         recon_sha256=sha.hexdigest(), codec_params=params)


def _code_groups(codec, band, band_valid, maps, groups, tile_bytes: float, where, source: str, bpp: float
                 ) -> list[tuple[bytes, Any]]:
    """Code each band group of one tile within ``tile_bytes``: (container, params) per group, in group order.

    Bytes go to groups by band count. Smaller groups are coded first; one that its share cannot hold
    (a codec's lowest rate is the same for one band as for three) gets up to 1.4x more at a time, at
    most three quarters of what is left, and the last, largest group gets all that remains."""
    i, w, h = where
    nb = sum(len(g) for g in groups)
    out: dict[int, tuple[bytes, Any]] = {}
    weight = {g: (SINGLE_BAND_WEIGHT if len(group) == 1 and len(groups) > 1 else float(len(group)))
              for g, group in enumerate(groups)}
    remaining, bands_left = float(tile_bytes), sum(weight.values())
    order = sorted(range(len(groups)), key=lambda g: (len(groups[g]), g))
    for k, g in enumerate(order):
        group = groups[g]
        planes = [_fill_invalid(_to8(band[b], *maps[b]), band_valid[b]) for b in group]
        if len(planes) == 2:
            planes.append(planes[1])
        img = np.ascontiguousarray(np.round(np.stack(planes, axis=2) if len(planes) == 3 else planes[0]).astype(np.uint8))
        last = k == len(order) - 1
        share = remaining if last else remaining * weight[g] / bands_left
        what = f"bands {group[0] + 1}-{group[-1] + 1}" if len(group) > 1 else f"band {group[0] + 1}"
        while True:
            nbytes = int(share)
            try:
                if nbytes < 1:
                    raise RateUnreachableError("no byte left")
                result = codec.encode(img, 8.0 * nbytes / (w * h))
                break
            except RateUnreachableError as exc:
                if last or share >= 0.75 * remaining:
                    raise RateUnreachableError(
                        f"{source}: {what} of tile {i} ({w}x{h} px) get {nbytes} bytes at {bpp} bpp for all {nb} "
                        f"bands, too few for {codec.name} ({exc}); raise --bpp (to about {bpp * 2:.3g}) or archive "
                        "with another codec") from None
                share = min(share * 1.4, 0.75 * remaining)
        out[g] = (result.bitstream, result.params)
        remaining -= len(result.bitstream)
        bands_left -= weight[g]
    return [out[g] for g in range(len(groups))]


def _decode_new_tile(header, i: int, tiles: list, n_groups: int, mask_blob: bytes,
                     band_mask_blobs: dict[str, bytes], parts: list[bytes]) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode tile ``i`` of a package being written, from its blobs (the same code path as a restore)."""
    lens = [[len(p) for p in parts] or [0] * n_groups if j == i else [0] * n_groups for j in range(len(tiles))]
    hd = header(lens)
    hd["tiles"] = [hd["tiles"][i]]
    blobs = [mask_blob] + [band_mask_blobs[k] for k in sorted(band_mask_blobs, key=int)] + list(parts)
    pkg = unpack_package(pack_package(hd, blobs))
    return decode_tile(pkg, 0)


def _quality(sq, n_valid, lo, hi, dtype, nbytes, W, H, nb) -> dict[str, Any]:
    from coldpress.metrics import PSNR_CAP_DB

    rmse, psnr_b, ranges, norm = [], [], [], []
    for b in range(nb):
        peak = 255.0 if dtype == np.uint8 else float(hi[b] - lo[b]) if hi[b] > lo[b] else 1.0
        mse = sq[b] / n_valid[b] if n_valid[b] else 0.0
        rmse.append(math.sqrt(mse))
        psnr_b.append(PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(peak * peak / mse)))
        ranges.append([_json_number(lo[b]) if n_valid[b] else None, _json_number(hi[b]) if n_valid[b] else None])
        norm.append(mse / (peak * peak))
    mean_norm = float(np.mean(norm)) if norm else 0.0
    overall = PSNR_CAP_DB if mean_norm == 0 else min(PSNR_CAP_DB, -10 * math.log10(mean_norm))
    return {
        "rmse_per_band": [round(v, 6) for v in rmse],
        "psnr_per_band": [round(v, 4) for v in psnr_b],
        "psnr_peak": "255 for uint8 bands, else the band's valid range (max - min)",
        "valid_range_per_band": ranges,
        "psnr": overall,
        "bits_per_band_pixel": 8.0 * nbytes / (W * H * nb),
        "valid_pixels": int(n_valid.max()) if nb else 0,
    }


# -- writing restored rasters ---------------------------------------------------------------------
def resolve_window(meta: dict[str, Any], *, window: tuple[float, ...] | None = None,
                   bbox: tuple[float, ...] | None = None, bbox_crs: str | None = None) -> tuple[int, int, int, int]:
    """(col, row, width, height) of a region given as a pixel window or a bounding box, clipped to the raster."""
    from affine import Affine
    from rasterio.windows import from_bounds

    W, H = meta["width"], meta["height"]
    if bbox is not None:
        if meta.get("gcps") and meta.get("crs") is None:
            raise ColdpressError("this raster is georeferenced by GCPs, not a transform: a --bbox cannot be placed "
                                 "on its grid; give a pixel --window instead")
        minx, miny, maxx, maxy = bbox
        if bbox_crs and meta.get("crs"):
            from rasterio.crs import CRS
            from rasterio.warp import transform_bounds

            src_crs, dst_crs = CRS.from_user_input(bbox_crs), CRS.from_wkt(meta["crs"])
            if src_crs != dst_crs:
                minx, miny, maxx, maxy = transform_bounds(src_crs, dst_crs, minx, miny, maxx, maxy, densify_pts=21)
        win = from_bounds(minx, miny, maxx, maxy, transform=Affine(*meta["transform"]))
        c0, r0 = math.floor(win.col_off + 1e-6), math.floor(win.row_off + 1e-6)
        c1 = math.ceil(win.col_off + win.width - 1e-6)
        r1 = math.ceil(win.row_off + win.height - 1e-6)
    elif window is not None:
        c0, r0, w, h = (int(v) for v in window)
        if w <= 0 or h <= 0:
            raise ColdpressError(f"--window {window}: width and height must be positive; pass COL ROW WIDTH HEIGHT")
        c1, r1 = c0 + w, r0 + h
    else:
        return 0, 0, W, H
    c0, r0, c1, r1 = max(0, c0), max(0, r0), min(W, c1), min(H, r1)
    if c1 <= c0 or r1 <= r0:
        bounds = meta.get("bounds")
        raise ColdpressError(
            f"the region asked for does not overlap the raster ({W}x{H} px, bounds {bounds} in {meta.get('crs_code')}); "
            "check the coordinates and --bbox-crs (default: the raster's CRS)")
    return c0, r0, c1 - c0, r1 - r0


def write_raster(pkg: Package, meta: dict[str, Any], path: str, *, driver: str = "COG",
                 window: tuple[int, int, int, int] | None = None) -> None:
    """Write the package's raster (or a window of it) to the local file ``path`` as a COG (driver "COG")
    or a plain tiled GeoTIFF ("GTiff"), with the source's CRS, transform, nodata, descriptions and tags.
    Tiles are decoded and written one at a time."""
    rasterio = _rio()
    import rasterio.shutil
    from affine import Affine
    from rasterio.windows import Window, transform as window_transform

    H, W, nb = pkg.shape
    col, row, w, h = window or (0, 0, W, H)
    transform = Affine(*meta["transform"])
    if window is not None:
        transform = window_transform(Window(col, row, w, h), transform)
    nodata = _from_json_number(meta.get("nodata"))
    needs_mask = nodata is None and any(t["mask"] for t in pkg.header["tiles"])
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": w, "height": h, "count": nb, "dtype": pkg.dtype.name,
        "crs": meta.get("crs") or None, "transform": transform, "nodata": nodata,
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }
    if pkg.dtype == np.uint8 and meta.get("colorinterp", [])[:3] == ["red", "green", "blue"]:
        profile["photometric"] = "RGB"
    if meta.get("crs") is None:
        profile.pop("crs")
        if meta.get("gcps") or transform.is_identity:
            profile.pop("transform")
    if w < 512 or h < 512:
        profile.update(tiled=False)
        profile.pop("blockxsize"), profile.pop("blockysize")
    tmpdir = tempfile.mkdtemp(prefix="coldpress-raster-")
    tmp = os.path.join(tmpdir, "restored.tif")
    try:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True, GDAL_PAM_ENABLED="NO", GDAL_CACHEMAX=GDAL_CACHE_MB):
            with rasterio.open(tmp, "w", **profile) as dst:
                for i in tiles_in_window(pkg, (col, row, w, h)):
                    t = pkg.header["tiles"][i]
                    pixels, m = decode_tile(pkg, i)
                    x0, y0 = max(col, t["x"]), max(row, t["y"])
                    x1, y1 = min(col + w, t["x"] + t["w"]), min(row + h, t["y"] + t["h"])
                    part = pixels[y0 - t["y"]:y1 - t["y"], x0 - t["x"]:x1 - t["x"]]
                    win = Window(x0 - col, y0 - row, x1 - x0, y1 - y0)
                    dst.write(np.ascontiguousarray(part.transpose(2, 0, 1)), window=win)
                    if needs_mask:
                        mm = m[y0 - t["y"]:y1 - t["y"], x0 - t["x"]:x1 - t["x"]] if m is not None else np.ones(part.shape[:2], bool)
                        dst.write_mask(np.where(mm, 255, 0).astype(np.uint8), window=win)
                _set_descriptive(dst, meta, window is None)
            if driver == "COG":
                n_ovr = len(meta.get("overviews") or [])
                options = {"COMPRESS": "DEFLATE", "BLOCKSIZE": 512, "BIGTIFF": "IF_SAFER"}
                if _custom_domains(meta):
                    # GDAL 3.10's COG driver copies other metadata domains only with COPY_SRC_MDD=YES, which
                    # then drops the bands' default-domain tags: a file with both keeps the domains.
                    options["COPY_SRC_MDD"] = "YES"
                options.update({"OVERVIEW_COUNT": n_ovr} if n_ovr else {"OVERVIEWS": "NONE"})
                rasterio.shutil.copy(tmp, path, driver="COG", **options)
            else:
                os.replace(tmp, path)
    finally:
        for name in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, name))
        os.rmdir(tmpdir)


def _custom_domains(meta: dict[str, Any]) -> bool:
    """Whether the dataset has tags in metadata domains other than the default one (and the skipped)."""
    return any(ns not in _SKIPPED_DOMAINS and ns != "" and tags for ns, tags in (meta.get("tags") or {}).items())


def _set_descriptive(dst, meta: dict[str, Any], whole: bool) -> None:
    from rasterio.enums import ColorInterp

    for b, desc in enumerate(meta.get("descriptions") or [], start=1):
        if desc:
            dst.set_band_description(b, desc)
    try:
        interp = [ColorInterp[name] for name in meta.get("colorinterp") or []]
        if len(interp) == dst.count:
            dst.colorinterp = interp
    except (KeyError, ValueError):
        pass
    scales, offsets = meta.get("scales"), meta.get("offsets")
    if scales and any(s != 1.0 for s in scales):
        dst.scales = scales
    if offsets and any(o != 0.0 for o in offsets):
        dst.offsets = offsets
    units = meta.get("units") or []
    if any(units):
        dst.units = [u or "" for u in units]
    for ns, tags in (meta.get("tags") or {}).items():
        if ns not in _SKIPPED_DOMAINS and tags:
            dst.update_tags(**tags) if ns == "" else dst.update_tags(ns=ns, **tags)
    for b, band_tags in enumerate(meta.get("band_tags") or [], start=1):
        for ns, tags in band_tags.items():
            if ns not in _SKIPPED_DOMAINS and tags:
                dst.update_tags(b, **tags) if ns == "" else dst.update_tags(b, ns=ns, **tags)
    if meta.get("colormap") and dst.count >= 1:
        try:
            dst.write_colormap(1, {int(k): tuple(v) for k, v in meta["colormap"].items()})
        except Exception:  # noqa: BLE001 - palettes only on uint8/uint16 single bands
            pass
    if meta.get("gcps") and not meta.get("crs"):
        from rasterio.control import GroundControlPoint
        from rasterio.crs import CRS

        pts = [GroundControlPoint(row=p[0], col=p[1], x=p[2], y=p[3], z=p[4], id=p[5], info=p[6])
               for p in meta["gcps"]["points"]]
        gcrs = CRS.from_wkt(meta["gcps"]["crs"]) if meta["gcps"].get("crs") else None
        if whole:
            dst.gcps = (pts, gcrs)
    if meta.get("rpcs") and whole:
        from rasterio.rpc import RPC

        dst.rpcs = RPC(**meta["rpcs"])


def coded_8bit(pixels: np.ndarray, header: dict[str, Any]) -> np.ndarray:
    """The 8-bit (H, W, 3) or (H, W) view of a restored raster: bands 1-3 (or 1) in the coded mapping;
    what PNG and other 8-bit formats get."""
    nb = pixels.shape[2]
    bands = [0, 1, 2] if nb >= 3 else [0]
    planes = [np.round(_to8(pixels[:, :, b], *header["map"][b])).astype(np.uint8) for b in bands]
    return np.stack(planes, axis=2) if len(planes) == 3 else planes[0]
