"""Encoding a raster: read it window by window, map, fill and code each tile's band groups, verify."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from coldpress.errors import InputRejected, RateUnreachableError
from coldpress.transforms.raster.detect import open_bytes
from coldpress.transforms.raster.mapping import _band_map, _fill_invalid, _to8
from coldpress.transforms.raster.masks import _pack_mask
from coldpress.transforms.raster.metadata import _json_number, raster_metadata
from coldpress.transforms.raster.package import TileDecoder, coded_window, masks_from_blobs, pack_package
from coldpress.transforms.raster.tiling import DEFAULT_TILE_SIZE, band_groups, tile_grid

#: Share of a tile's bytes that a last group of one band gets, in bands (a group of k bands gets k):
#: a codec codes one band as an RGB image of three equal channels, which costs more than a third
#: (2.0 vs 1.0 with the learned codec at 0.1 bpp: NAIP RGBN near-infrared +0.8 to +1.5 dB for -0.2 to
#: -0.4 dB on RGB, every band then above JPEG 2000 at the same bytes; results/raster/).
SINGLE_BAND_WEIGHT = 2.0

#: Data types mapped to 8 bits (complex types are rejected).
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
#: Pixels each tile's coded window reaches into each neighbouring tile; a pixel within it of a tile edge
#: is the weighted mean of both tiles' decodes (``package.TileDecoder``): tile edges are no coded image's
#: border, so no seam (results/raster/seams.txt: the step across tile edges of WebP tiles fell from 2.4x
#: to below that across a macroblock edge, for about 3 % more pixels coded with 1024 px tiles).
TILE_OVERLAP = 8
_LEN_PLACEHOLDER = 10**7 - 1  # header estimate: every blob length written with 7 digits


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


def _masks_from_pixels(ds, data: np.ndarray) -> np.ndarray | None:
    """The band masks GDAL would give, computed from the pixels where GDAL itself derives them from
    the pixels (integer bands without a mask band: all valid, or valid where not nodata); None where
    the masks must be read (mask bands, alpha, floating-point nodata). Reading them through GDAL
    reads every window again, and windows not aligned on the file's blocks (tiles with their
    overlap) cost about 40 times more that way."""
    from rasterio.enums import MaskFlags

    if not np.issubdtype(data.dtype, np.integer):
        return None
    flags = [list(f) for f in ds.mask_flag_enums]
    if all(f == [MaskFlags.all_valid] for f in flags):
        return np.ones(data.shape, dtype=bool)
    if all(f == [MaskFlags.nodata] for f in flags):
        info = np.iinfo(data.dtype)
        nodata = [v if v is not None and info.min <= v <= info.max and float(v).is_integer() else None
                  for v in ds.nodatavals]
        if any(v is None for v in nodata):
            return None  # a nodata value the band cannot hold: let GDAL decide
        return data != np.asarray(nodata, dtype=data.dtype)[:, None, None]
    return None


def _read_tile(ds, win_tuple, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data (bands, h, w), dataset valid (h, w), band valid (bands, h, w)) of one tile window."""
    from rasterio.windows import Window

    x, y, w, h = win_tuple
    win = Window(x, y, w, h)
    try:
        data = ds.read(window=win)
        band_valid = _masks_from_pixels(ds, data)
        if band_valid is None:
            band_valid = ds.read_masks(window=win) > 0
            dataset_valid = ds.dataset_mask(window=win) > 0
        else:
            dataset_valid = band_valid.any(axis=0)
    except Exception as exc:  # noqa: BLE001 - GDAL's read errors: a truncated or corrupt file
        raise _reject(source, f"GDAL could not read the pixels of window {win_tuple} ({type(exc).__name__}: {exc}); "
                      "the file is truncated or corrupt", "copy it again from its origin (gdalinfo -checksum shows "
                      "where it breaks), or remove it from SRC") from None
    if np.issubdtype(data.dtype, np.floating):
        band_valid &= np.isfinite(data)
    dataset_valid &= band_valid.any(axis=0)
    return data, dataset_valid, band_valid


def encode_raster(data: bytes, source: str, codec, bpp: float, *, tile_size: int = DEFAULT_TILE_SIZE,
                  max_pixels: int = 178_956_970, overlap: int = TILE_OVERLAP) -> EncodedRaster:
    """Encode the raster file ``data`` (named ``source`` in messages) at ``bpp`` bits per spatial pixel."""
    try:
        ctx = open_bytes(data)
        ds = ctx.__enter__()
    except Exception as exc:  # noqa: BLE001
        raise _reject(source, f"GDAL cannot open it as a raster ({type(exc).__name__}: {exc})",
                      "check that it is a complete GeoTIFF, COG or JPEG 2000 file (gdalinfo shows what is wrong)") from None
    try:
        check_dataset(ds, source, max_pixels)
        return _encode_dataset(ds, source, codec, bpp, tile_size, overlap)
    finally:
        ctx.__exit__(None, None, None)


def _encode_dataset(ds, source: str, codec, bpp: float, tile_size: int, overlap: int) -> EncodedRaster:
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
    extra = {"overlap": int(overlap)} if overlap and len(tiles) > 1 else {}

    def header(parts: list[list[int]]) -> dict[str, Any]:
        return {
            "width": W, "height": H, "bands": nb, "dtype": dtype.name, "groups": groups,
            "map": [[float(a), float(s)] for a, s in maps], "nodata": _json_number(nodata),
            "fill": _json_number(fill), "tile_size": tile_size, "codec": codec.name, **extra,
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

    # Pass 2: map, fill and code each tile's coded window (the tile and its overlap), a row of tiles
    # at a time; a row is verified (decoded from what was written, through the restore's TileDecoder,
    # hashed, its error per band accumulated) once the row below it is coded, its last input.
    sq = np.zeros(nb)
    n_valid = np.zeros(nb)
    tile_parts: list[list[bytes] | None] = [None] * len(tiles)
    params: list[Any] = [None] * len(tiles)
    sha = hashlib.sha256()
    wsum = sum(weights) or 1.0
    hd = header([[0] * len(groups) for _ in tiles])

    def parts_of(i: int) -> list[bytes]:
        assert tile_parts[i] is not None, f"tile {i} decoded before it was coded"
        return tile_parts[i]

    decoder = TileDecoder(hd, parts_of, lambda i: masks_from_blobs(
        mask_blobs[i], {int(k): v for k, v in band_mask_blobs[i].items()}, tiles[i][3], tiles[i][2]))
    rows: dict[int, list[int]] = {}
    for i, (x, y, _, _) in enumerate(tiles):
        rows.setdefault(y, []).append(i)
    row_ys = sorted(rows)

    def verify_row(y: int) -> None:
        decoder.release_above(y)
        recons = []
        for i in sorted(rows[y], key=lambda i: tiles[i][0]):
            x0, y0, w, h = tiles[i]
            recon, _ = decoder.region((x0, y0, w, h))
            if weights[i]:
                band, _, band_valid = _read_tile(ds, tiles[i], source)
                for b in range(nb):
                    v = band_valid[b]
                    if v.any():
                        d = band[b][v].astype(np.float64) - recon[:, :, b][v].astype(np.float64)
                        sq[b] += float(np.dot(d, d))
                        n_valid[b] += v.sum()
            recons.append(recon)
        sha.update(np.ascontiguousarray(np.concatenate(recons, axis=1)).tobytes())

    spent, weight_left = 0, wsum
    for r, y in enumerate(row_ys):
        for i in rows[y]:
            tile_parts[i] = []
            if weights[i]:  # a tile with no valid pixel is not coded
                cw = coded_window(hd, i)
                band, _, band_valid = _read_tile(ds, cw, source)
                # Its share of the bytes not spent yet: what earlier tiles left unused (a codec's rate
                # steps rarely land on its budget) goes to the tiles after them.
                share = (available - spent) * weights[i] / weight_left
                coded = _code_groups(codec, band, band_valid, maps, groups, share, (i, cw[2], cw[3]), source, bpp)
                tile_parts[i] = [c[0] for c in coded]
                params[i] = [c[1] for c in coded]
                spent += sum(len(c[0]) for c in coded)
                weight_left -= weights[i]
        if r:
            verify_row(row_ys[r - 1])
    verify_row(row_ys[-1])

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
