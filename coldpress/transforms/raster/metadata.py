"""The row's ``raster`` metadata: everything a GIS needs to use a restored file in place of the source."""

from __future__ import annotations

import math
from typing import Any

#: Metadata domains not written back: they describe the source file's layout or are written otherwise.
_SKIPPED_DOMAINS = {"IMAGE_STRUCTURE", "DERIVED_SUBDATASETS", "SUBDATASETS", "RPC", "GEOLOCATION"}


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
