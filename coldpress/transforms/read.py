"""Decode source bytes into the 8-bit pixel arrays codecs take, or reject them with a reason.

Decoding uses Pillow (PNG, JPEG, TIFF, WebP, BMP, GIF, AVIF and whatever else it opens). Every input
is fully decoded before it is accepted: a truncated file is rejected, never archived half-grey.

Mode policy (what is coded; the restored image has the same mode):

==============================  =====================================================================
source mode                     coded as
==============================  =====================================================================
L, LA, RGB, RGBA                unchanged
1 (bilevel)                     L, 0 and 255
P (palette)                     RGBA when the palette carries transparency, RGB otherwise
PA                              RGBA
L / RGB with a tRNS colour      LA / RGBA (the transparent colour becomes alpha 0)
La, RGBa (premultiplied)        LA, RGBA (un-premultiplied by Pillow)
RGBX                            RGB
CMYK, YCbCr, LAB, HSV           RGB with Pillow's conversion (CMYK: naive, the ICC profile is
                                recorded, not applied)
I;16, I;16B, I;16L, I;16N       L scaled: round(v * 255 / 65535); the original range is recorded
I (32-bit integer)              as I;16 when every value is in 0..65535, else rejected
RGB/RGBA with 16-bit samples    RGB/RGBA: Pillow keeps the high byte of each sample (recorded)
RGBA GeoTIFF whose 4th band     RGB: the 4th band (e.g. near-infrared in NAIP RGBN) is dropped
GDAL marks as not alpha         (recorded); Pillow reads such files as RGBA
F (32-bit float), others        rejected: no defined 8-bit mapping
==============================  =====================================================================

Alpha is preserved: the codec layer (``coldpress/codec/base.py``) stores a non-opaque alpha plane
losslessly and restores an opaque one as opaque. Multi-frame files (animated GIF/WebP, multi-page
TIFF) archive their first frame; the frame count is recorded.

Orientation: an EXIF Orientation tag of 2..8 is applied with ``PIL.ImageOps.exif_transpose``, so the
archived pixels are upright as a viewer shows them; the original tag value is recorded in the metadata
and restored files carry no orientation tag.

Size limit: the pixel count is read from the header before any pixel is decoded; images above
``max_pixels`` are rejected without allocating them. Pillow's own decompression-bomb limit
(``2 * PIL.Image.MAX_IMAGE_PIXELS``, 178,956,970 pixels by default) still applies on top: raise
``PIL.Image.MAX_IMAGE_PIXELS`` in the application to accept larger images.
"""

from __future__ import annotations

import hashlib
import io
import math
import numbers
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, TiffTags, UnidentifiedImageError

from coldpress.errors import EnvironmentFault, InputRejected

#: Default largest image accepted, in pixels: Pillow's decompression-bomb hard limit.
DEFAULT_MAX_PIXELS = 178_956_970

#: Modes codecs take.
CODED_MODES = ("L", "LA", "RGB", "RGBA")

# TIFF tags that describe the file's layout, meaningless once the pixels are decoded.
_LAYOUT_TAGS = {
    254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325,
    338, 339, 347, 513, 514, 530, 531, 532,
}
# Tags left out of the metadata: binary blobs (maker notes, ICC, XMP, IPTC, Photoshop) and the
# pointers to sub-IFDs (their content is read separately).
_SKIPPED_TAGS = {
    0x927C,  # MakerNote
    0x8773,  # ICC profile (recorded separately)
    0x02BC,  # XMP
    0x83BB,  # IPTC
    0x8649,  # Photoshop
    0xC4A5,  # PrintIM
    0x8769,  # Exif IFD pointer
    0x8825,  # GPS IFD pointer
    0xA005,  # Interop IFD pointer
    0x014A,  # SubIFDs
}
_MAX_LIST = 256  # longer tag values (e.g. lookup tables) are left out
_MAX_STR = 2048
_MAX_HEX_BYTES = 64
_PNG_TEXT_KEYS = 64
_INFO_KEYS = ("dpi", "gamma", "srgb", "compression", "progressive", "progression", "interlace", "chromaticity")
_RAWMODE_BITS = re.compile(r"^(?:1|L|LA|P|PA|I|RGB|RGBA|RGBX|CMYK);(\d+)")
_GDAL_METADATA_TAG = 42112
_GDAL_BAND4_INTERP = re.compile(r'<Item\s+name="COLORINTERP"\s+sample="3"[^>]*>([^<]*)</Item>')


@dataclass(frozen=True)
class DecodedInput:
    """One decoded source image, ready for a codec."""

    #: uint8 array: (H, W) for L, (H, W, 2) LA, (H, W, 3) RGB, (H, W, 4) RGBA.
    pixels: np.ndarray
    #: Mode of ``pixels``: "L", "LA", "RGB" or "RGBA".
    mode: str
    width: int
    height: int
    #: Pillow's format name of the source ("PNG", "JPEG", "TIFF", ...).
    source_format: str
    #: Pillow's mode of the source before conversion ("P", "I;16", "CMYK", ...).
    source_mode: str
    #: Bits per sample of the source (1, 2, 4, 8, 16 or 32).
    bit_depth: int
    #: JSON-able facts about the source: EXIF, orientation, ICC profile, conversions made.
    metadata: dict[str, Any] = field(default_factory=dict)


def _reject(source: str, what: str, todo: str) -> InputRejected:
    return InputRejected(f"{source}: {what}; {todo}")


# -- JSON-safe metadata ---------------------------------------------------------------------------
def _json_safe(value: Any, depth: int = 0) -> Any:
    """A JSON-serializable rendering of a tag value, or None to leave it out."""
    if depth > 4:
        return None
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int):
        return value
    if isinstance(value, numbers.Real):  # float, IFDRational, Fraction
        try:
            f = float(value)
        except (ZeroDivisionError, ValueError, OverflowError):
            return None
        return f if math.isfinite(f) else None
    if isinstance(value, str):
        return value.replace("\x00", "").strip()[:_MAX_STR]
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        text = raw.rstrip(b"\x00")
        if text and all(32 <= c < 127 or c in (9, 10, 13) for c in text):
            return text.decode("ascii")[:_MAX_STR]
        return raw.hex() if len(raw) <= _MAX_HEX_BYTES else None
    if isinstance(value, (tuple, list)):
        if len(value) > _MAX_LIST:
            return None
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, dict):
        out = {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None}
    return str(value)[:_MAX_STR]


def _tag_name(tag: int, names: dict[int, str]) -> str:
    name = names.get(tag)
    if name:
        return name
    looked_up = TiffTags.lookup(tag).name
    return looked_up if looked_up and looked_up != "unknown" else f"0x{tag:04x}"


def _exif_metadata(img: Image.Image, notes: list[str]) -> tuple[dict[str, Any], int | None]:
    """(EXIF/TIFF tags by name, the Orientation tag value or None)."""
    try:
        exif = img.getexif()
    except Exception as exc:  # noqa: BLE001 - broken EXIF must not reject a readable image
        notes.append(f"EXIF could not be read and was left out ({type(exc).__name__}: {exc})")
        return {}, None
    out: dict[str, Any] = {}
    orientation = exif.get(0x0112)
    for tag, value in exif.items():
        if tag in _LAYOUT_TAGS or tag in _SKIPPED_TAGS:
            continue
        safe = _json_safe(value)
        if safe is not None:
            out[_tag_name(tag, ExifTags.TAGS)] = safe
    sub_ifds = ((ExifTags.IFD.Exif, ExifTags.TAGS, None), (ExifTags.IFD.GPSInfo, ExifTags.GPSTAGS, "GPSInfo"))
    for ifd, names, into in sub_ifds:
        try:
            sub = exif.get_ifd(ifd)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"EXIF sub-directory {ifd.name} could not be read ({type(exc).__name__}: {exc})")
            continue
        target: dict[str, Any] = out if into is None else {}
        for tag, value in sub.items():
            if tag in _SKIPPED_TAGS:
                continue
            safe = _json_safe(value)
            if safe is not None:
                target[_tag_name(tag, names)] = safe
        if into is not None and target:
            out[into] = target
    if not isinstance(orientation, int):
        orientation = None
    return out, orientation


def _icc_metadata(img: Image.Image) -> dict[str, Any] | None:
    icc = img.info.get("icc_profile")
    if not icc:
        return None
    out: dict[str, Any] = {"bytes": len(icc), "sha256": hashlib.sha256(icc).hexdigest()}
    try:
        from PIL import ImageCms

        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        out["description"] = ImageCms.getProfileDescription(profile).strip()
    except Exception:  # noqa: BLE001 - an unreadable profile is still recorded by size and hash
        out["description"] = None
    return out


def _info_metadata(img: Image.Image) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _INFO_KEYS:
        if key in img.info:
            safe = _json_safe(img.info[key])
            if safe is not None:
                out[key] = safe
    text = getattr(img, "text", None) if img.format == "PNG" else None
    if text:
        out["png_text"] = {
            str(k)[:80]: _json_safe(v) for k, v in list(text.items())[:_PNG_TEXT_KEYS] if isinstance(v, str)
        }
    if img.info.get("xmp"):
        out["xmp_bytes"] = len(img.info["xmp"])
    return out


def _bit_depth(img: Image.Image) -> int:
    mode = img.mode
    if mode == "1":
        return 1
    if mode.startswith("I;16"):
        return 16
    if mode in ("I", "F"):
        return 32
    for tile in getattr(img, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        if isinstance(args, tuple) and args:
            args = args[0]
        rawmode = args if isinstance(args, str) else ""
        match = _RAWMODE_BITS.match(rawmode)
        if match and int(match.group(1)) in (1, 2, 4, 16):
            return int(match.group(1))
    return 8


# -- opening and loading --------------------------------------------------------------------------
def _declared_size(data: bytes) -> int | None:
    """The file size a container header declares (RIFF: WebP, and others), or None."""
    if len(data) >= 12 and data[:4] == b"RIFF":
        return int.from_bytes(data[4:8], "little") + 8
    return None


def _declared_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) a PNG, GIF or BMP header declares, or None: Pillow refuses to open an image
    that declares a zero size, and the reason should say so."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data[:2] == b"BM" and len(data) >= 26 and int.from_bytes(data[14:18], "little") >= 40:
        return abs(int.from_bytes(data[18:22], "little", signed=True)), abs(int.from_bytes(data[22:26], "little", signed=True))
    return None


def _zero_size(source: str, width: int, height: int) -> InputRejected:
    return _reject(source, f"image has zero size ({width}x{height})", "remove it from SRC; there is nothing to archive")


def _open(data: bytes, source: str, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # Sizes between Pillow's warning and error limits are judged by max_pixels below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise _reject(
                source,
                f"image is too large to decode safely ({exc})",
                f"split or downscale it below {max_pixels:,} pixels, or raise PIL.Image.MAX_IMAGE_PIXELS "
                "if the file is trusted",
            ) from None
        except UnidentifiedImageError:
            dims = _declared_dimensions(data)
            if dims is not None and 0 in dims:
                raise _zero_size(source, *dims) from None
            raise _reject(
                source,
                f"not an image Pillow can read ({len(data):,} bytes starting with {data[:8]!r})",
                "remove it from SRC, or convert it to PNG, JPEG, TIFF or WebP",
            ) from None
        except Exception as exc:  # noqa: BLE001 - any failure to parse the header
            declared = _declared_size(data)
            if declared is not None and len(data) < declared:
                raise _reject(
                    source,
                    f"file is truncated: its header declares {declared:,} bytes but only {len(data):,} are present",
                    "the copy is incomplete: copy the file again from its origin, or remove it from SRC",
                ) from None
            if "truncat" in str(exc).lower() or isinstance(exc, EOFError):
                raise _reject(
                    source,
                    f"file is truncated within its header ({type(exc).__name__}: {exc})",
                    "the copy is incomplete: copy the file again from its origin, or remove it from SRC",
                ) from None
            raise _reject(
                source,
                f"the image header does not parse ({type(exc).__name__}: {exc})",
                "the file is damaged or in an unsupported variant; re-export it as PNG, JPEG or TIFF",
            ) from None


def _check_pillow_settings() -> None:
    """Pillow must refuse truncated files. Its switch is process-wide: flipping it here would change
    how every other thread of the application reads images, so an application that turned it on
    gets an error (the job stops; no input is rejected for it)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise EnvironmentFault(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so Pillow would accept truncated "
            "files without a word and coldpress would archive damaged images; set it to False (Pillow's "
            "default) before running coldpress, or run coldpress in its own process"
        )


def _load(img: Image.Image, source: str) -> None:
    """Decode every pixel of the first frame, refusing truncated data."""
    try:
        img.load()
    except MemoryError:
        raise _reject(
            source, "not enough memory to decode this image", "run with more memory or fewer workers, or downscale it"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure
        msg = str(exc)
        if "truncated" in msg.lower() or isinstance(exc, (EOFError,)):
            raise _reject(
                source,
                f"file is truncated ({msg})",
                "the copy is incomplete: copy the file again from its origin, or remove it from SRC",
            ) from None
        raise _reject(
            source,
            f"pixel data does not decode ({type(exc).__name__}: {msg})",
            "the file is damaged; re-export or re-copy it, or remove it from SRC",
        ) from None


# -- mode conversion ------------------------------------------------------------------------------
def _scale_16bit(img: Image.Image, source: str, notes: list[str]) -> Image.Image:
    values = np.asarray(img)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi > 65535:
        raise _reject(
            source,
            f"mode {img.mode} image has values {lo}..{hi}, outside the 16-bit range 0..65535 coldpress maps to 8 bits",
            "rescale it to 8- or 16-bit unsigned integers (e.g. a 16-bit PNG or TIFF) and archive that",
        )
    scaled = ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    notes.append(
        f"{img.mode} samples (range {lo}..{hi}) scaled to 8-bit L as round(v * 255 / 65535); "
        "the archive keeps 8-bit precision"
    )
    return Image.fromarray(scaled)


def _gdal_fourth_band(img: Image.Image) -> str | None:
    """GDAL's colour interpretation of the 4th sample of a TIFF (e.g. "Undefined" for near-infrared)."""
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return None
    text = tags.get(_GDAL_METADATA_TAG)
    if not isinstance(text, str):
        return None
    match = _GDAL_BAND4_INTERP.search(text)
    return match.group(1).strip() if match else None


def _to_coded_mode(img: Image.Image, source: str, notes: list[str], band4: str | None = None) -> Image.Image:
    """``img`` in one of CODED_MODES; ``band4`` is GDAL's interpretation of a TIFF's 4th band."""
    mode = img.mode
    if mode == "RGBA" and band4 is not None and band4.lower() != "alpha":
        notes.append(
            f"4th band is not alpha (GDAL colour interpretation {band4!r}, e.g. near-infrared) and was "
            "dropped: the first three bands are archived as RGB"
        )
        return img.convert("RGB")
    has_trns = img.info.get("transparency") is not None
    if mode in ("L", "RGB") and has_trns:
        target = "LA" if mode == "L" else "RGBA"
        notes.append(f"{mode} with a transparent colour converted to {target}")
        return img.convert(target)
    if mode in CODED_MODES:
        return img
    if mode == "1":
        notes.append("bilevel (1-bit) converted to L with values 0 and 255")
        return img.convert("L")
    if mode == "P":
        alpha = has_trns or (img.palette is not None and img.palette.mode == "RGBA")
        target = "RGBA" if alpha else "RGB"
        notes.append(f"palette (P) converted to {target}")
        return img.convert(target)
    simple = {
        "PA": "RGBA", "La": "LA", "RGBa": "RGBA", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB",
    }
    if mode in simple:
        notes.append(f"{mode} converted to {simple[mode]} with Pillow's conversion")
        return img.convert(simple[mode])
    if mode.startswith("I;16") or mode == "I":
        return _scale_16bit(img, source, notes)
    if mode == "F":
        raise _reject(
            source,
            "32-bit floating-point samples (mode F) have no defined mapping to 8 bits",
            "scale the data to 0..255 or 0..65535 and save it as an 8- or 16-bit PNG or TIFF first",
        )
    raise _reject(
        source,
        f"pixel mode {mode!r} is not supported (coldpress archives L, LA, RGB, RGBA and converts 1, P, PA, "
        "CMYK, YCbCr, LAB, HSV and 16-bit grayscale)",
        "convert the image to 8-bit RGB or grayscale first",
    )


def decode_input(data: bytes, source: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedInput:
    """Decode ``data`` (the bytes of the file ``source``, named in messages) into a DecodedInput.

    Raises InputRejected, saying what is wrong and what to do, for empty, truncated, non-image,
    oversized, zero-size or unsupported-mode inputs; EnvironmentFault when the application told
    Pillow to accept truncated files.
    """
    _check_pillow_settings()
    if data is None or len(data) == 0:
        raise _reject(source, "file is empty (0 bytes)", "copy it again from its origin, or remove it from SRC")
    data = bytes(data)
    img = _open(data, source, max_pixels)
    notes: list[str] = []
    frames: int | None = 1
    try:
        frames = int(getattr(img, "n_frames", 1) or 1)
    except Exception as exc:  # noqa: BLE001 - later frames that do not parse do not spoil the first
        frames = None
        notes.append(f"frame count unknown: a later frame does not parse ({type(exc).__name__}: {exc})")
        img.close()
        img = _open(data, source, max_pixels)  # counting left the file positioned on the broken frame
    try:
        width, height = img.size
        if width <= 0 or height <= 0:  # plugins that do not refuse it themselves
            raise _zero_size(source, width, height)
        if width * height > max_pixels:
            raise _reject(
                source,
                f"image is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,}",
                "split or downscale it, or raise the pixel limit (max_pixels) if the file is trusted",
            )
        source_format = img.format or "unknown"
        source_mode = img.mode
        bit_depth = _bit_depth(img)
        _load(img, source)

        exif, orientation = _exif_metadata(img, notes)
        metadata: dict[str, Any] = {
            "source_format": source_format,
            "source_mode": source_mode,
            "source_size": [width, height],
            "bit_depth": bit_depth,
            "frames": frames,
            "exif": exif,
            "exif_orientation": orientation,
            "orientation_applied": False,
            "icc_profile": _icc_metadata(img),
        }
        metadata.update(_info_metadata(img))
        if frames is not None and frames > 1:
            notes.append(f"first of {frames} frames archived")
        if bit_depth == 16 and not source_mode.startswith("I"):
            notes.append("16-bit samples reduced to 8 bits by Pillow (the high byte of each sample is kept)")

        band4 = _gdal_fourth_band(img) if source_format == "TIFF" else None
        try:
            image = img
            if orientation is not None and 2 <= orientation <= 8:
                image = ImageOps.exif_transpose(img)
                metadata["orientation_applied"] = True
                notes.append(
                    f"EXIF orientation {orientation} applied with PIL.ImageOps.exif_transpose; pixels are upright"
                )
            elif orientation not in (None, 1):
                notes.append(f"EXIF orientation {orientation} is not a valid value (1..8) and was ignored")
            coded = _to_coded_mode(image, source, notes, band4)
            pixels = np.ascontiguousarray(np.asarray(coded), dtype=np.uint8)
        except InputRejected:
            raise
        except Exception as exc:  # noqa: BLE001 - a conversion failure is a property of this input
            raise _reject(
                source,
                f"the {source_mode} image could not be converted to 8-bit pixels ({type(exc).__name__}: {exc})",
                "re-export it as an 8-bit RGB PNG or JPEG",
            ) from None
        mode = coded.mode
        if mode not in CODED_MODES or pixels.ndim not in (2, 3):
            raise _reject(
                source,
                f"conversion produced an unexpected {mode} array {pixels.shape}",
                "convert the image to 8-bit RGB first",
            )
        metadata["conversions"] = notes
        h, w = pixels.shape[:2]
        return DecodedInput(
            pixels=pixels,
            mode=mode,
            width=int(w),
            height=int(h),
            source_format=source_format,
            source_mode=source_mode,
            bit_depth=bit_depth,
            metadata=metadata,
        )
    finally:
        img.close()
