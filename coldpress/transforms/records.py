"""Archive records: source bytes in, one archive row out; archive row in, pixels and image files out.

These are the functions every engine calls per input. A row is a plain dict whose keys are the
columns of the archive (``coldpress/transforms/schema.py``):

=================  =========================================================================
column             meaning
=================  =========================================================================
id                 stable record id: the normalized source key (``sources.record_id``)
source_uri         where the source was read from
source_bytes       size of the source file
source_sha256      sha256 (hex) of the source file's bytes
width, height      size of the coded image (after EXIF orientation)
mode               mode coded: L, LA, RGB or RGBA (see ``transforms/read.py`` for the policy); RASTER
                   for a geospatial raster (``transforms/raster/``)
source_format      Pillow's name of the source format (PNG, JPEG, TIFF, ...); GDAL's driver for rasters
source_mode        Pillow's mode of the source (P, I;16, CMYK, ...); "<bands>x<dtype>" for rasters
codec              codec name
model_id           model identity ("" for reference codecs)
weights_hash       first 8 bytes of the weights' sha256, hex ("" for reference codecs)
target_bpp         the bits per pixel asked for
achieved_bpp       8 * len(bitstream) / (width * height), container included (all bands of a raster)
bitstream          the coldpress container bytes (a raster package, CPRT, for rasters)
bitstream_sha256   sha256 (hex) of ``bitstream``, checked before every decode
recon_sha256       sha256 (hex) of the decoded pixels' bytes (C order) when the row was written
psnr               PSNR in dB of the decoded colour channels against the coded ones (alpha, stored
                   losslessly, is left out); 99.0 for an exact reconstruction
metadata           JSON text: EXIF, orientation, ICC profile, conversions, codec rate parameters; for
                   rasters "raster" (CRS, transform, nodata, bands, tags: ``raster.raster_metadata``)
                   and "quality" (RMSE and PSNR per band in the source's units)
coldpress_version  version of coldpress that wrote the row
codec_version      model id for learned codecs, else the codec's version or "pillow-<version>"
torch_version      installed torch version ("" if none)
device_class       where the codec computed ("cpu", "cuda")
created_at         UTC time the row was made (timezone-aware datetime)
=================  =========================================================================

Every row is verified on write: the bitstream is decoded right away and must give back an image
of the coded size and mode; ``recon_sha256`` lets a later restore check it decodes the same pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import re
import unicodedata
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np
import PIL
from PIL import Image

from coldpress.codec.base import Codec, check_bpp, image_mode
from coldpress.codec.limits import loads_bounded
from coldpress.codec.registry import decode_bitstream
from coldpress.errors import BitstreamError, ColdpressError, EnvironmentFault, InputRejected
from coldpress.transforms import raster
from coldpress.transforms.faults import raise_if_environmental
from coldpress.transforms.read import DEFAULT_MAX_PIXELS, decode_input
from coldpress.transforms.sources import SourceFile, filesystem_for, record_id, source_sha256
from coldpress.metrics import PSNR_CAP_DB, psnr
from coldpress.versions import coldpress_version, installed_version

log = logging.getLogger(__name__)

#: PSNR recorded for an exact reconstruction (and the cap of any higher value).
PSNR_CAP = PSNR_CAP_DB

#: Output formats of restored images: name -> (Pillow format, file extension, keeps alpha).
OUTPUT_FORMATS: dict[str, tuple[str, str, bool]] = {
    "png": ("PNG", "png", True),
    "webp": ("WEBP", "webp", True),
    "tiff": ("TIFF", "tif", True),
    "tif": ("TIFF", "tif", True),
    "bmp": ("BMP", "bmp", False),  # Pillow reads 32-bit BMPs back as RGB
    "jpeg": ("JPEG", "jpg", False),
    "jpg": ("JPEG", "jpg", False),
    # Rasters (mode RASTER) restore as a Cloud Optimized GeoTIFF with "auto", "geotiff" and "cog", as a
    # plain tiled GeoTIFF with "tiff"; other formats get the 8-bit coded view of bands 1-3 (or 1).
    # Photos restore as PNG with "auto" and as a Pillow TIFF with "geotiff" and "cog".
    "auto": ("PNG", "png", True),
    "geotiff": ("TIFF", "tif", True),
    "cog": ("TIFF", "tif", True),
}
_RASTER_DRIVERS = {"auto": "COG", "geotiff": "COG", "cog": "COG", "tiff": "GTiff", "tif": "GTiff"}
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}, "TIFF": {"compression": "tiff_deflate"}}

# Filesystems whose single write is atomic by nature: an object appears whole or not at all.
_ATOMIC_PUT_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"}


# -- versions -------------------------------------------------------------------------------------


def codec_version(codec: Codec) -> str:
    """What identifies the codec's implementation: its model id, a declared version, or Pillow's."""
    described = codec.describe()
    for key in ("codec_version", "version"):
        if described.get(key):
            return str(described[key])
    if codec.model_id:
        return codec.model_id
    return f"pillow-{PIL.__version__}"


# -- hashing and quality --------------------------------------------------------------------------
def pixels_sha256(pixels: np.ndarray) -> str:
    """sha256 (hex) of an image array's bytes in C order: the ``recon_sha256`` of a row."""
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


# -- writing rows ---------------------------------------------------------------------------------
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
        rid = str(key)
    return {"id": rid, "source_uri": str(uri), "reason": reason, "created_at": _now()}


def unreadable_row(key: str, uri: str, exc: BaseException) -> dict[str, Any]:
    """The rejected row of a source that could not be read; ``exc`` is what reading it raised.

    Raises EnvironmentFault instead when the read failed for the environment (credentials, network,
    disk): that is not the input's fault, and the job must stop rather than reject it."""
    raise_if_environmental(exc, f"reading {uri}")
    reason = (
        f"ReadError: could not read {uri} ({type(exc).__name__}: {exc}); check that it exists and "
        "that the job's credentials can read it, then run the job again"
    )
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


# -- reading rows ---------------------------------------------------------------------------------
def checked_bitstream(row: Mapping[str, Any]) -> bytes:
    """The bitstream of an archive row, after checking it against ``bitstream_sha256``."""
    rid = row.get("id", "?")
    bitstream = row.get("bitstream")
    if bitstream is None:
        raise BitstreamError(
            f"archive row {rid!r} has no bitstream; the archive is corrupt: restore it from a replica "
            f"or re-encode the source {row.get('source_uri', '')}"
        )
    bitstream = bytes(bitstream)
    expected = str(row.get("bitstream_sha256") or "")
    actual = hashlib.sha256(bitstream).hexdigest()
    if actual != expected.lower():
        raise BitstreamError(
            f"archive row {rid!r} is corrupt: its bitstream's sha256 is {actual} but the row records "
            f"{expected or 'none'}; restore the archive file from a replica or re-encode the source "
            f"{row.get('source_uri', '')}"
        )
    return bitstream  # a raster package's declarations are checked by raster.unpack_package


def is_raster_row(row: Mapping[str, Any]) -> bool:
    """Whether a row holds a geospatial raster (mode RASTER, a raster package bitstream)."""
    return row.get("mode") == raster.RASTER_MODE


def decode_record(row: Mapping[str, Any], decoder: Any = None) -> np.ndarray:
    """The image of an archive row, after checking its bitstream against ``bitstream_sha256``.

    Rasters decode to (H, W, bands) arrays of the source's data type, nodata and masks applied.
    ``decoder``: a ``coldpress.codec.diffusion.DecoderChoice`` (or its fields as a mapping); None is the
    coarse decoder, the one ``verify`` checks."""
    rid = row.get("id", "?")
    bitstream = checked_bitstream(row)
    if raster.is_package(bitstream):
        _refuse_diffusion_raster(row, decoder)
        pixels = raster.decode_package(bitstream)  # declarations and the decode's memory bounded there
    else:
        pixels = decode_bitstream(bitstream, decoder=decoder)
    width, height = row.get("width"), row.get("height")
    if width is not None and height is not None and pixels.shape[:2] != (int(height), int(width)):
        raise BitstreamError(
            f"archive row {rid!r} says {width}x{height} but its bitstream decodes to "
            f"{pixels.shape[1]}x{pixels.shape[0]}; the archive is corrupt: restore it from a replica"
        )
    return pixels


# -- restoring files ------------------------------------------------------------------------------
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
_UNSAFE_CHARS = re.compile(r'[<>:"|?*\\/]')
_MAX_COMPONENT_BYTES = 200


def _output_format(fmt: str) -> tuple[str, str, bool]:
    spec = OUTPUT_FORMATS.get(str(fmt).lower().lstrip("."))
    if spec is None:
        raise ValueError(f"unknown output format {fmt!r}; choose one of: {', '.join(sorted(OUTPUT_FORMATS))}")
    return spec


def _safe_component(part: str) -> str:
    part = unicodedata.normalize("NFC", part)
    chars = []
    for ch in part:
        category = unicodedata.category(ch)
        if category[0] in ("C", "Z") and ch != " ":  # control, format, surrogate, unassigned, separators
            chars.append("_")
        elif _UNSAFE_CHARS.match(ch):
            chars.append("_")
        else:
            chars.append(ch)
    safe = "".join(chars).strip(" .")  # Windows drops trailing dots and spaces; leading ones hide files
    if not safe:
        safe = "_"
    if safe.split(".")[0].upper() in _WINDOWS_RESERVED:
        safe = "_" + safe
    encoded = safe.encode("utf-8")
    if len(encoded) > _MAX_COMPONENT_BYTES:
        digest = hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        safe = encoded[: _MAX_COMPONENT_BYTES - 9].decode("utf-8", "ignore") + "~" + digest
    return safe


def restored_name(record_id: str, fmt: str = "png") -> str:
    """A safe relative output path for a record: its id's folders and name, with ``fmt``'s extension.

    The result never escapes the destination it is joined to: it has no "..", "." or empty
    components, no leading "/", no drive letter or ":" at all, no backslash, NUL or control
    characters, and no Windows-reserved names. Characters that are unsafe in file names on common
    systems become "_". Different ids can give the same name (e.g. "a.jpg" and "a.png"); use
    :func:`restored_names` to name a batch without collisions.
    """
    _, ext, _ = _output_format(fmt)
    text = str(record_id).replace("\\", "/")
    parts = [p for p in text.split("/") if p.strip(" ") not in ("", ".", "..")]
    parts = [_safe_component(p) for p in parts] or ["_"]
    stem, dot, _suffix = parts[-1].rpartition(".")
    if not dot or not stem:
        stem = parts[-1]
    parts[-1] = f"{stem}.{ext}"
    return "/".join(parts)


def restored_names(record_ids: list[str], fmt: str = "png") -> dict[str, str]:
    """``restored_name`` of each id, with a short hash of the id added where two ids collide."""
    names = {rid: restored_name(rid, fmt) for rid in record_ids}
    seen: dict[str, int] = {}
    for name in names.values():
        seen[name.lower()] = seen.get(name.lower(), 0) + 1
    out = {}
    for rid, name in names.items():
        if seen[name.lower()] > 1:
            stem, _, ext = name.rpartition(".")
            name = f"{stem}~{hashlib.sha256(str(rid).encode('utf-8', 'surrogatepass')).hexdigest()[:8]}.{ext}"
        out[rid] = name
    return out


def to_pil(pixels: np.ndarray) -> Image.Image:
    """A Pillow image of an L, LA, RGB or RGBA uint8 array."""
    mode = image_mode(pixels)
    img = Image.fromarray(np.ascontiguousarray(pixels))
    if img.mode != mode:  # pragma: no cover - Pillow infers these modes from the shapes
        img = img.convert(mode)
    return img


#: Key of the PNG text chunk (and the JSON object in the TIFF/JPEG/WebP ImageDescription) recording which
#: decoder made a restored file: decoder, steps, detail, decoder weights id and sha256.
PROVENANCE_KEY = "coldpress:decoder"
_EXIF_IMAGE_DESCRIPTION = 0x010E


def image_bytes(pixels: np.ndarray, fmt: str = "png", provenance: Mapping[str, Any] | None = None) -> bytes:
    """The encoded file content of ``pixels`` in output format ``fmt``.

    JPEG and BMP keep no alpha: LA and RGBA images are written as L and RGB (alpha dropped).
    ``provenance`` (what made the pixels) goes into a PNG text chunk ``coldpress:decoder``, or the
    ImageDescription of TIFF, JPEG and WebP files as ``{"coldpress:decoder": {...}}``; BMP has no room.
    """
    pil_format, _, keeps_alpha = _output_format(fmt)
    img = to_pil(pixels)
    if not keeps_alpha and img.mode in ("LA", "RGBA"):
        img = img.convert(img.mode[:-1])
    options = dict(_SAVE_OPTIONS.get(pil_format, {}))
    if provenance:
        text = json.dumps(dict(provenance), sort_keys=True)
        if pil_format == "PNG":
            from PIL.PngImagePlugin import PngInfo

            info = PngInfo()
            info.add_text(PROVENANCE_KEY, text)
            options["pnginfo"] = info
        elif pil_format == "TIFF":
            options["tiffinfo"] = {270: json.dumps({PROVENANCE_KEY: dict(provenance)}, sort_keys=True)}
        elif pil_format in ("JPEG", "WEBP"):
            exif = Image.Exif()
            exif[_EXIF_IMAGE_DESCRIPTION] = json.dumps({PROVENANCE_KEY: dict(provenance)}, sort_keys=True)
            options["exif"] = exif.tobytes()
    buf = io.BytesIO()
    img.save(buf, format=pil_format, **options)
    return buf.getvalue()


def restored_provenance(data: bytes) -> dict[str, Any] | None:
    """The decoder provenance recorded in a restored image file (``image_bytes``), or None."""
    with Image.open(io.BytesIO(data)) as img:
        text = img.info.get(PROVENANCE_KEY) if img.format == "PNG" else None
        if text:
            return json.loads(text)
        description = None
        if img.format == "TIFF":
            description = img.tag_v2.get(270)
        elif img.format in ("JPEG", "WEBP"):
            description = img.getexif().get(_EXIF_IMAGE_DESCRIPTION)
        if description:
            try:
                return json.loads(description).get(PROVENANCE_KEY)
            except (ValueError, AttributeError):
                return None
    return None


def decoder_fields(decoder: Any) -> dict[str, Any] | None:
    """A decoder choice as plain fields for workers (checked where it is made: the driver), or None for
    the coarse decoder."""
    if decoder is None:
        return None
    from coldpress.codec.diffusion import DecoderChoice

    choice = DecoderChoice.of(decoder)
    return None if choice.is_coarse else choice.to_dict()


def decoder_provenance(decoder: Any) -> dict[str, Any] | None:
    """What a restored file records about ``decoder`` (None for the coarse decoder: nothing recorded)."""
    if decoder is None:
        return None
    from coldpress.codec.diffusion import DecoderChoice, provenance

    choice = DecoderChoice.of(decoder)
    return None if choice.is_coarse else provenance(choice)


def _refuse_diffusion_raster(row: Mapping[str, Any], decoder: Any) -> None:
    if decoder is None:
        return
    from coldpress.codec.diffusion import DecoderChoice

    if not DecoderChoice.of(decoder).is_coarse:
        raise ColdpressError(
            f"{row.get('id')!r} is a georeferenced raster: the diffusion decoder restores photos (it invents "
            "plausible detail, which rasters measured in physical units must not get); restore rasters "
            "without --decoder diffusion"
        )


def write_image(
    pixels: np.ndarray, dst_uri: str, fmt: str = "png", storage_options: dict[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> int:
    """Write ``pixels`` as an image file at ``dst_uri`` (local path or fsspec URL); return its size.

    The file appears whole or not at all: locally it is written to a hidden temporary name in the
    same folder and renamed; on object stores (s3, gs, az, memory) one PUT is atomic by itself;
    on other filesystems it is written to a temporary name and moved.
    """
    return write_file_bytes(image_bytes(pixels, fmt, provenance), dst_uri, storage_options)


def write_file_bytes(data: bytes, dst_uri: str, storage_options: dict[str, Any] | None = None) -> int:
    """Write ``data`` at ``dst_uri`` atomically (see ``write_image``); return its size."""
    fs, path = filesystem_for(dst_uri, storage_options)
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if "file" in protocols or "local" in protocols:
        path = os.path.abspath(path)
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        # A hidden temporary name, created exclusively with mode 0o666 so that the kernel applies the
        # process umask as open() would (reading the umask would mean setting it, for every thread).
        tmp = os.path.join(parent, f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return len(data)
    if protocols & _ATOMIC_PUT_PROTOCOLS:
        fs.pipe_file(path, data)
        return len(data)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{os.urandom(6).hex()}.tmp")
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, path)
    except BaseException:
        try:
            fs.rm(tmp)
        except Exception:  # noqa: BLE001 - best effort; the original error matters
            pass
        raise
    return len(data)


# -- restoring rows, rasters included -------------------------------------------------------------
def with_extension(target: str, ext: str) -> str:
    head, _, name = str(target).rpartition("/")
    stem, dot, _old = name.rpartition(".")
    name = f"{stem if dot and stem else name}.{ext}"
    return f"{head}/{name}" if head else name


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
