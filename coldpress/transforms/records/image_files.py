"""Restored image files of photos: the output formats, a file's bytes (``image_bytes``) with the
decoder's provenance in it (read back by ``restored_provenance``), and ``write_image``."""

from __future__ import annotations

import io
import json
from typing import Any, Mapping

import numpy as np
from PIL import Image

from coldpress.codec.base import image_mode
from coldpress.transforms.records.atomic_write import write_file_bytes

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
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}, "TIFF": {"compression": "tiff_deflate"}}


def _output_format(fmt: str) -> tuple[str, str, bool]:
    spec = OUTPUT_FORMATS.get(str(fmt).lower().lstrip("."))
    if spec is None:
        raise ValueError(f"unknown output format {fmt!r}; choose one of: {', '.join(sorted(OUTPUT_FORMATS))}")
    return spec


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
