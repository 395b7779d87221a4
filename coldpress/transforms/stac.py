"""STAC metadata of an archive: one Collection, one Item per archived raster (pystac).

Each Item has the raster's footprint in WGS 84 (its bounds in its own CRS, densified and transformed),
a datetime (from the raster's tags, else a YYYYMMDD date in its id, else the time it was archived;
``coldpress:datetime_source`` says which), the projection extension (``proj:code``, ``proj:transform``,
``proj:shape``, ``proj:bbox``), and one asset, ``archive``: the Parquet shard holding its row, with
the raster extension (``raster:bands``: data type, nodata, scale, offset, unit) and the file
extension (``file:size``, ``file:checksum``: the shard's sha2-256 multihash), plus ``coldpress:id`` (the
row id to restore: ``coldpress restore ARCHIVE DST --id ID``) and ``coldpress:bitstream_sha256``.
Rows that are photos (not rasters) get no Item. A raster row whose metadata does not parse, nests
deeper than ``limits.MAX_JSON_DEPTH`` (a hostile or damaged archive) or holds no raster description
gets no Item either: ``build_catalog`` returns its id and why, and ``coldpress stac`` lists it.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from datetime import datetime, timezone
from typing import Any

from coldpress.codec.limits import loads_bounded

#: Tags that may hold the acquisition time, in the order they are tried.
_TIME_TAGS = ("ACQUISITION_DATETIME", "ACQUISITIONDATETIME", "ACQUISITION_DATE", "ACQUISITIONDATE",
              "DATE_ACQUIRED", "DATETIME", "TIFFTAG_DATETIME")
_DATE_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")
_DATA_TYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64", "complex64"}


def _parse_time(text: str) -> datetime | None:
    text = str(text).strip()
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def item_datetime(rid: str, meta: dict[str, Any], created_at: datetime) -> tuple[datetime, str]:
    tags = (meta.get("tags") or {}).get("", {})
    upper = {k.upper(): v for k, v in tags.items()}
    for key in _TIME_TAGS:
        if key in upper:
            t = _parse_time(upper[key])
            if t is not None:
                return t, f"tag {key}"
    m = _DATE_IN_NAME.search(posixpath.basename(rid))
    if m:
        t = _parse_time("".join(m.groups()))
        if t is not None:
            return t, "date in the id"
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=timezone.utc)
    return created_at, "archived_at"


def footprint(meta: dict[str, Any]) -> dict[str, Any] | None:
    """GeoJSON polygon of the raster's bounds in EPSG:4326, or None without a CRS."""
    if not meta.get("crs"):
        return None
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    left, bottom, right, top = meta["bounds"]
    ring = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
    geom = {"type": "Polygon", "coordinates": [ring]}
    return transform_geom(CRS.from_wkt(meta["crs"]), "EPSG:4326", geom, precision=9)


def _bbox(geom: dict[str, Any]) -> list[float]:
    xs = [p[0] for ring in geom["coordinates"] for p in ring]
    ys = [p[1] for ring in geom["coordinates"] for p in ring]
    return [min(xs), min(ys), max(xs), max(ys)]


def _item_id(rid: str) -> str:
    """A STAC Item id from a row id: folders joined with "__" (pystac names files after ids)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", rid.replace("/", "__"))
    return safe or "_"


def _raster_meta(row: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(the raster description in a row's metadata, "") or (None, why it is unusable); the metadata
    is parsed with the depth bound of everything read from an archive (``limits.loads_bounded``)."""
    try:
        meta = loads_bounded(row["metadata"] or "{}", "its metadata")
    except ValueError as exc:
        return None, str(exc)[:200]
    r = meta.get("raster", {}) if isinstance(meta, dict) else None
    if not isinstance(r, dict):
        return None, "its metadata is not a JSON object holding a 'raster' object"
    return r, ""


def _sha256_multihash(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "1220" + h.hexdigest()


def build_catalog(archive: str, storage_options: dict[str, Any] | None = None, *, collection_id: str | None = None,
                  checksums: bool = True):
    """(pystac.Collection, items written, [(id, why) of each raster row left out]) for the archive's
    rasters."""
    import pyarrow.parquet as pq
    import pystac
    from pystac.extensions.file import FileExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import DataType, RasterBand, RasterExtension

    from coldpress.transforms.archive import open_archive
    from coldpress.transforms.sources import filesystem_for

    fs, _ = filesystem_for(archive, storage_options)
    arch = open_archive(archive, filesystem=fs)
    columns = ["id", "mode", "metadata", "created_at", "width", "height", "codec", "achieved_bpp", "psnr",
               "bitstream_sha256", "source_sha256", "source_uri"]
    items, left_out = [], []
    for shard in arch.shards:
        shard_fs, shard_path = filesystem_for(shard.path, storage_options)
        with shard_fs.open(shard_path, "rb") as f:
            table = pq.read_table(f, columns=columns)
        rows = [r for r in table.to_pylist() if r["mode"] == "RASTER"]
        if not rows:
            continue
        checksum = _sha256_multihash(shard_fs, shard_path) if checksums else None
        for row in rows:
            r, why = _raster_meta(row)
            if r is None:
                left_out.append((row["id"], why))
                continue
            when, source = item_datetime(row["id"], r, row["created_at"])
            geom = footprint(r)
            props = {
                "coldpress:id": row["id"], "coldpress:datetime_source": source, "coldpress:codec": row["codec"],
                "coldpress:bpp": row["achieved_bpp"], "coldpress:psnr": row["psnr"],
                "coldpress:source_uri": row["source_uri"], "coldpress:source_sha256": row["source_sha256"],
            }
            item = pystac.Item(id=_item_id(row["id"]), geometry=geom, bbox=_bbox(geom) if geom else None,
                               datetime=when, properties=props)
            proj = ProjectionExtension.ext(item, add_if_missing=True)
            proj.code = r.get("crs_code") if r.get("crs_code") and ":" in str(r.get("crs_code")) else None
            if not proj.code and r.get("crs"):
                proj.wkt2 = r["crs"]
            proj.transform = list(r.get("transform") or [])[:6]
            proj.shape = [row["height"], row["width"]]
            if r.get("bounds"):
                proj.bbox = list(r["bounds"])
            asset = pystac.Asset(href=shard.path, media_type="application/vnd.apache.parquet",
                                 roles=["data", "archive"], title=f"coldpress archive shard {shard.name}",
                                 extra_fields={"coldpress:id": row["id"],
                                               "coldpress:bitstream_sha256": row["bitstream_sha256"]})
            item.add_asset("archive", asset)
            raster_ext = RasterExtension.ext(asset, add_if_missing=True)
            bands = []
            nodatas = r.get("nodatavals") or [r.get("nodata")] * (r.get("count") or 0)
            for b in range(r.get("count") or 0):
                dt = r.get("dtype")
                nodata = nodatas[b] if b < len(nodatas) else None
                bands.append(RasterBand.create(
                    data_type=DataType(dt) if dt in _DATA_TYPES else None,
                    nodata=nodata, scale=(r.get("scales") or [None] * (b + 1))[b],
                    offset=(r.get("offsets") or [None] * (b + 1))[b], unit=(r.get("units") or [None] * (b + 1))[b]))
            raster_ext.bands = bands
            file_ext = FileExtension.ext(asset, add_if_missing=True)
            file_ext.size = shard.num_bytes
            if checksum:
                file_ext.checksum = checksum
            items.append(item)
    name = collection_id or posixpath.basename(str(archive).rstrip("/")) or "coldpress-archive"
    if items:
        boxes = [i.bbox for i in items if i.bbox]
        spatial = [[min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                    max(b[3] for b in boxes)]] if boxes else [[-180.0, -90.0, 180.0, 90.0]]
        times = sorted(i.datetime for i in items)
        temporal = [[times[0], times[-1]]]
    else:
        spatial, temporal = [[-180.0, -90.0, 180.0, 90.0]], [[None, None]]
    collection = pystac.Collection(
        id=_item_id(name), description=f"Rasters archived by coldpress in {arch.path}",
        extent=pystac.Extent(pystac.SpatialExtent(spatial), pystac.TemporalExtent(temporal)),
        license="other", extra_fields={"coldpress:archive": arch.path},
    )
    for item in items:
        collection.add_item(item)
    return collection, len(items), left_out


def write_catalog(archive: str, out: str, storage_options: dict[str, Any] | None = None, **kwargs
                  ) -> tuple[str, int, list[tuple[str, str]]]:
    """Write the STAC Collection (``out/collection.json``) and Items under the local folder ``out``;
    return (the collection's path, number of Items, the raster rows left out: ``build_catalog``)."""
    import os

    import pystac

    collection, n, left_out = build_catalog(archive, storage_options, **kwargs)
    out = os.path.abspath(out)
    collection.normalize_hrefs(out)
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return os.path.join(out, "collection.json"), n, left_out
