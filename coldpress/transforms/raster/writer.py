"""Writing a restored raster (or a window of it) as a Cloud Optimized GeoTIFF or a plain GeoTIFF."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from coldpress.transforms.raster.detect import GDAL_CACHE_MB, _rio
from coldpress.transforms.raster.metadata import _SKIPPED_DOMAINS, _from_json_number
from coldpress.transforms.raster.package import Package, TileDecoder, tiles_in_window

#: Window restores of at most this many samples (pixels x bands: 64 MB of float32 while composing) are
#: decoded as one region.
WHOLE_REGION_SAMPLES = 16 * 2**20


def write_raster(pkg: Package, meta: dict[str, Any], path: str, *, driver: str = "COG",
                 window: tuple[int, int, int, int] | None = None) -> None:
    """Write the package's raster (or a window of it) to the local file ``path`` as a COG (driver "COG")
    or a plain tiled GeoTIFF ("GTiff"), with the source's CRS, transform, nodata, descriptions and tags.
    Tiles are decoded and written one at a time; a small window at once, from only the parts of its tiles
    it needs."""
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
                # A small window is composed at once, each tile decoding only the part of it the window needs
                # (TileDecoder.partial); anything larger tile by tile, row by row, decoded tiles kept for two rows.
                small = window is not None and w * h * nb <= WHOLE_REGION_SAMPLES
                decoder = TileDecoder.of(pkg, partial=small)
                for i in [None] if small else tiles_in_window(pkg, (col, row, w, h)):
                    if i is None:
                        x0, y0, x1, y1 = col, row, col + w, row + h
                    else:
                        t = pkg.header["tiles"][i]
                        decoder.release_above(t["y"])
                        x0, y0 = max(col, t["x"]), max(row, t["y"])
                        x1, y1 = min(col + w, t["x"] + t["w"]), min(row + h, t["y"] + t["h"])
                    part, m = decoder.region((x0, y0, x1 - x0, y1 - y0))
                    win = Window(x0 - col, y0 - row, x1 - x0, y1 - y0)
                    dst.write(np.ascontiguousarray(part.transpose(2, 0, 1)), window=win)
                    if needs_mask:
                        mm = m if m is not None else np.ones(part.shape[:2], bool)
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
