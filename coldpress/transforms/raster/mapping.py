"""Band values to the codec's 8-bit domain and back; invalid pixels filled before coding, nodata on restore."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

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



def coded_8bit(pixels: np.ndarray, header: dict[str, Any]) -> np.ndarray:
    """The 8-bit (H, W, 3) or (H, W) view of a restored raster: bands 1-3 (or 1) in the coded mapping;
    what PNG and other 8-bit formats get."""
    nb = pixels.shape[2]
    bands = [0, 1, 2] if nb >= 3 else [0]
    planes = [np.round(_to8(pixels[:, :, b], *header["map"][b])).astype(np.uint8) for b in bands]
    return np.stack(planes, axis=2) if len(planes) == 3 else planes[0]
