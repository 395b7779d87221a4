"""Source bytes in, one archive row out: ``process_input`` (the archived or the rejected row of one input),
``encode_record`` (a photo's row, or a raster's: ``transforms/raster/``), verified on write.

The row's columns are described in ``coldpress/transforms/records/__init__.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from typing import Any

import numpy as np
import PIL

from coldpress.codec.base import Codec, check_bpp
from coldpress.errors import ColdpressError, EnvironmentFault, InputRejected
from coldpress.metrics import PSNR_CAP_DB, psnr
from coldpress.transforms import raster
from coldpress.transforms.faults import raise_if_environmental
from coldpress.transforms.read import DEFAULT_MAX_PIXELS, decode_input
from coldpress.transforms.records.decode import pixels_sha256
from coldpress.transforms.sources import SourceFile, record_id, source_sha256
from coldpress.versions import coldpress_version, installed_version

log = logging.getLogger(__name__)

#: PSNR recorded for an exact reconstruction (and the cap of any higher value).
PSNR_CAP = PSNR_CAP_DB


def codec_version(codec: Codec) -> str:
    """What identifies the codec's implementation: its model id, a declared version, or Pillow's."""
    described = codec.describe()
    for key in ("codec_version", "version"):
        if described.get(key):
            return str(described[key])
    if codec.model_id:
        return codec.model_id
    return f"pillow-{PIL.__version__}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def encode_record(
    key: str, uri: str, data: bytes, codec: Codec, bpp: float, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> dict[str, Any]:
    """One archive row for the source ``key`` read from ``uri`` with content ``data``.

    Raises InputRejected for inputs that cannot be archived (including a failed verify-on-write) and
    RateUnreachableError when the codec cannot reach ``bpp``.
    """
    rid = record_id(key)
    if isinstance(data, SourceFile) and not raster.is_raster(data):
        data = data.read()  # a large TIFF that is a photo: Pillow reads it whole, as any photo
    if raster.is_raster(data):
        return _raster_record(rid, uri, data, codec, bpp, max_pixels)
    try:
        decoded = decode_input(data, uri, max_pixels=max_pixels)
    except InputRejected:
        gdal_error = raster.gdal_open_error(data) if data and not raster.is_photo_format(data) else "not tried"
        if gdal_error is None:  # Pillow cannot read it, GDAL can: archive it as a raster
            return _raster_record(rid, uri, data, codec, bpp, max_pixels)
        if raster.looks_like_raster_file(data):
            raise InputRejected(
                f"{uri}: neither Pillow nor GDAL can read this TIFF or JPEG 2000 file (GDAL: {gdal_error}); it is "
                "truncated or corrupt: copy it again from its origin (gdalinfo shows what is wrong), or remove it from SRC"
            ) from None
        raise
    result = codec.encode(decoded.pixels, bpp)
    try:
        recon = codec.decode(result.bitstream)
    except Exception as exc:  # noqa: BLE001 - whatever breaks, the row must not be written
        raise_if_environmental(exc, f"verifying what was just encoded for {uri}")
        raise InputRejected(
            f"{uri}: verify-on-write failed: the bitstream just written does not decode "
            f"({type(exc).__name__}: {exc}); nothing was archived for it. This is a codec fault: report it "
            "with this input, or archive it with another codec"
        ) from None
    if recon.shape != decoded.pixels.shape or recon.dtype != np.uint8:
        raise InputRejected(
            f"{uri}: verify-on-write failed: the bitstream decodes to a {recon.dtype} array of shape "
            f"{recon.shape}, not the coded {decoded.pixels.shape}; nothing was archived for it. This is a "
            "codec fault: report it with this input, or archive it with another codec"
        )
    metadata = dict(decoded.metadata)
    metadata["codec_params"] = result.params
    return _row(rid, uri, data, codec, bpp, bytes(result.bitstream), metadata, width=decoded.width,
                height=decoded.height, mode=decoded.mode, source_format=decoded.source_format,
                source_mode=decoded.source_mode, achieved_bpp=float(result.achieved_bpp),
                recon_sha256=pixels_sha256(recon), psnr=psnr(decoded.pixels, recon))


def _row(rid: str, uri: str, data: bytes, codec: Codec, bpp: float, bitstream: bytes, metadata: dict[str, Any],
         **coded: Any) -> dict[str, Any]:
    """An archive row: the source's and codec's columns, plus ``coded`` (size, mode, formats, achieved
    bpp, recon_sha256, psnr), which photos and rasters compute differently. A Parquet dataset row's
    other columns (``datasets.DatasetBytes``) go into the metadata as ``dataset``."""
    described = codec.describe()
    columns = getattr(data, "columns", None)
    if columns:
        metadata = {**metadata, "dataset": columns}
    kind = codec.decode_device_kind()
    if kind is not None:
        metadata = {**metadata, "decode_device_kind": kind}
    return {
        "id": rid,
        "source_uri": str(uri),
        "source_bytes": len(data),
        "source_sha256": source_sha256(data),
        "codec": codec.name,
        "model_id": codec.model_id,
        "weights_hash": str(described.get("weights_hash") or codec.weights_hash.hex()),
        "target_bpp": float(bpp),
        "bitstream": bitstream,
        "bitstream_sha256": hashlib.sha256(bitstream).hexdigest(),
        "metadata": json.dumps(metadata, sort_keys=True, ensure_ascii=False, allow_nan=False, default=str),
        "coldpress_version": coldpress_version(),
        "codec_version": codec_version(codec),
        "torch_version": installed_version("torch"),
        "device_class": str(codec.device_class),
        "created_at": _now(),
        **coded,
    }


def _raster_record(rid: str, uri: str, data: bytes, codec: Codec, bpp: float, max_pixels: int) -> dict[str, Any]:
    """The row of a geospatial raster (``transforms/raster/``), verified on write tile by tile."""
    enc = raster.encode_raster(data, uri, codec, bpp, max_pixels=max_pixels)
    try:
        raster.unpack_package(enc.package)
    except Exception as exc:  # noqa: BLE001
        raise InputRejected(
            f"{uri}: verify-on-write failed: the raster package just written does not parse ({exc}); nothing was "
            "archived for it. This is a coldpress fault: report it with this input, or archive it with another codec"
        ) from None
    meta = enc.metadata
    metadata = {"raster": meta, "quality": enc.quality, "codec_params": enc.codec_params,
                "source_format": meta["driver"], "bit_depth": np.dtype(meta["dtype"]).itemsize * 8}
    return _row(rid, uri, data, codec, bpp, enc.package, metadata, width=enc.width, height=enc.height,
                mode=raster.RASTER_MODE, source_format=meta["driver"], source_mode=f"{meta['count']}x{meta['dtype']}",
                achieved_bpp=8.0 * len(enc.package) / (enc.width * enc.height), recon_sha256=enc.recon_sha256,
                psnr=float(enc.quality["psnr"]))


def rejected_row(key: str, uri: str, reason: str) -> dict[str, Any]:
    """A row of the rejected table."""
    try:
        rid = record_id(key)
    except ColdpressError:
        rid = str(key).replace("\x00", "#")  # a mark (sources.COLLISION_MARK, sources.DUPLICATE_MARK) shown, not a NUL
    return {"id": rid, "source_uri": str(uri), "reason": reason, "created_at": _now()}


def unreadable_row(key: str, uri: str, exc: BaseException) -> dict[str, Any]:
    """The rejected row of a source that could not be read; ``exc`` is what reading it raised.

    Raises EnvironmentFault instead when the read failed for the environment (credentials, network,
    disk): that is not the input's fault, and the job must stop rather than reject it."""
    raise_if_environmental(exc, f"reading {uri}")
    if isinstance(exc, IsADirectoryError):  # a link to a folder (sources.list_sources lists, never walks, them)
        todo = "it is a folder (a link to one: links are not walked, they can loop); pass that folder as a source"
    else:
        todo = "check that it exists (a link's target too) and that the job's credentials can read it"
    reason = f"ReadError: could not read {uri} ({type(exc).__name__}: {exc}); {todo}, then run the job again"
    return rejected_row(key, uri, reason)


def process_input(
    key: str,
    uri: str,
    data_or_exc: bytes | BaseException,
    codec: Codec,
    bpp: float,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[str, dict[str, Any]]:
    """("archived", row) or ("rejected", {"id", "source_uri", "reason", "created_at"}).

    ``data_or_exc`` is the source's bytes, or the exception reading it raised. Bad input never
    raises: every failure while decoding, encoding or verifying one input becomes a rejected row
    whose reason names the error class and says what to do. A fault of the environment (GPU out of
    memory, driver, credentials, full disk, dropped connection: ``transforms.faults``) is not the
    input's: it raises EnvironmentFault and stops the job. A bad ``bpp`` (a job setting, not an
    input) raises ValueError.
    """
    bpp = check_bpp(bpp)
    if isinstance(data_or_exc, BaseException):
        return "rejected", unreadable_row(key, uri, data_or_exc)
    try:
        return "archived", encode_record(key, uri, data_or_exc, codec, bpp, max_pixels=max_pixels)
    except EnvironmentFault:
        raise
    except ColdpressError as exc:
        return "rejected", rejected_row(key, uri, f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - one input must never fail the job
        raise_if_environmental(exc, f"archiving {uri}")
        log.warning("unexpected error archiving %s", uri, exc_info=True)
        reason = (
            f"{type(exc).__name__}: {exc} (unexpected error while archiving {uri}; this input was "
            "skipped; report it with the input if the cause is not clear)"
        )
        return "rejected", rejected_row(key, uri, reason)
