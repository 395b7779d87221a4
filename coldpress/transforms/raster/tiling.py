"""The tile grid and band groups of a raster package, and regions (pixel windows, bounding boxes)."""

from __future__ import annotations

import math
from typing import Any

from coldpress.errors import ColdpressError

#: Side of a tile of the raster package, in pixels.
DEFAULT_TILE_SIZE = 1024
#: Bands coded together as one RGB image.
GROUP_SIZE = 3


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
