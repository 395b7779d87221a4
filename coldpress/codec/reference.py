"""Reference codecs: standard still-image formats through Pillow, with rate control.

They are the baselines the learned codecs are measured against, and a dependable fallback:

- ``jpeg``, ``webp``, ``avif``: the image coded at full scale;
- ``avif-half``, ``avif-quarter``: the image downscaled by 2 or 4 (Lanczos), coded as AVIF, and
  upscaled back to its original size (Lanczos) on decode. At 0.01-0.05 bpp a full-scale AVIF
  cannot go low enough (its lowest quality needs ~0.06 bpp on a Kodak image); coding fewer pixels can.

All of them share ``PillowCodec``: rate control binary-searches the format's quality knob for the
highest quality whose payload fits the byte budget. The container params are ``{"q": quality}``
plus ``"s": scale`` for the downscaling codecs. Encoding is deterministic: the same image gives the
same bytes (AVIF pins its speed and thread count, since libaom's output depends on both).
Payloads carry no metadata (no EXIF, ICC or XMP): they are encoded from bare pixel arrays, and the
archive row carries the source's metadata.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from coldpress.codec.base import Codec, EncodeResult
from coldpress.codec.registry import register
from coldpress.errors import BitstreamError, InputRejected, RateUnreachableError

_RESAMPLE = Image.Resampling.LANCZOS


class _LowestQualityTooLarge(RateUnreachableError):
    """Raised by ``_encode_rgb`` when the lowest quality overflows; ``encode`` restates it in bpp."""

    def __init__(self, message: str, needed_payload_bytes: int, max_payload_bytes: int):
        super().__init__(message)
        self.needed_payload_bytes = needed_payload_bytes
        self.max_payload_bytes = max_payload_bytes


class PillowCodec(Codec):
    """A reference codec: one Pillow image format, at full scale or downscaled by ``scale``."""

    #: Pillow format name ("JPEG", "WEBP", "AVIF").
    pil_format: ClassVar[str]
    #: Integer downscale factor applied before encoding (1: full scale).
    scale: ClassVar[int] = 1
    #: Lowest and highest value of Pillow's ``quality`` option for this format.
    quality_range: ClassVar[tuple[int, int]] = (0, 100)
    #: Largest width or height the format can code.
    max_dimension: ClassVar[int]
    #: Whether a grayscale image is coded as a one-channel image (saves the chroma bits).
    codes_grayscale: ClassVar[bool] = True
    #: What to tell a user whose target this codec cannot reach.
    lower_rate_hint: ClassVar[str] = "raise --bpp"

    # -- format specifics ------------------------------------------------------------------------
    def _save_options(self, grayscale: bool) -> dict[str, Any]:
        """Pillow ``save`` options besides ``quality``; fixed so that encoding is deterministic."""
        return {}

    # -- Codec contract ----------------------------------------------------------------------
    def coded_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the image actually coded for a ``width`` x ``height`` input."""
        return max(1, math.ceil(width / self.scale)), max(1, math.ceil(height / self.scale))

    def _params_probe(self) -> dict[str, Any]:
        return self._params(self.quality_range[1])

    def _params(self, quality: int) -> dict[str, Any]:
        return {"q": quality} if self.scale == 1 else {"q": quality, "s": self.scale}

    def _prepare(self, rgb: np.ndarray) -> tuple[Image.Image, dict[str, Any]]:
        """The Pillow image actually coded (downscaled, one channel if gray) and its save options."""
        h, w = rgb.shape[:2]
        cw, ch = self.coded_size(w, h)
        if max(cw, ch) > self.max_dimension:
            raise InputRejected(
                f"{self.name} cannot code an image of {cw}x{ch} pixels (its limit is {self.max_dimension} "
                "per side); use avif, avif-half or avif-quarter, or tile the image before archiving"
            )
        grayscale = self.codes_grayscale and bool(
            np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2])
        )
        image = Image.fromarray(rgb[:, :, 0] if grayscale else rgb, "L" if grayscale else "RGB")
        if (cw, ch) != (w, h):
            image = image.resize((cw, ch), _RESAMPLE)
        return image, self._save_options(grayscale)

    def _save(self, image: Image.Image, quality: int, options: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format=self.pil_format, quality=quality, **options)
        return buf.getvalue()

    def payload_at_quality(self, rgb: np.ndarray, quality: int) -> bytes:
        """The payload of an (H, W, 3) uint8 image at a given quality, without rate control."""
        lo, hi = self.quality_range
        if not lo <= quality <= hi:
            raise ValueError(f"{self.name} quality must be in {lo}..{hi}, got {quality}")
        image, options = self._prepare(np.ascontiguousarray(rgb))
        return self._save(image, quality, options)

    def _highest_quality(self, image: Image.Image, options: dict[str, Any],
                         max_payload_bytes: int) -> tuple[bytes | None, int]:
        """(payload at the highest quality that fits, that quality), or (None, size at the lowest quality).

        Sizes grow with quality almost monotonically; where they do not, this still returns a fit.
        """
        lo, hi = self.quality_range
        best = self._save(image, lo, options)
        if len(best) > max_payload_bytes:
            return None, len(best)
        best_q, too_big = lo, hi + 1  # `lo` fits, `hi + 1` is out of range (treated as too big)
        while too_big - best_q > 1:
            mid = (best_q + too_big) // 2
            payload = self._save(image, mid, options)
            if len(payload) <= max_payload_bytes:
                best_q, best = mid, payload
            else:
                too_big = mid
        return best, best_q

    def _encode_rgb(self, rgb: np.ndarray, max_payload_bytes: int) -> tuple[bytes, dict[str, Any]]:
        h, w = rgb.shape[:2]
        image, options = self._prepare(rgb)
        best, quality = self._highest_quality(image, options, max_payload_bytes)
        if best is None:
            raise _LowestQualityTooLarge(
                f"{self.name} cannot fit this {w}x{h} image into {max_payload_bytes} payload bytes: its "
                f"lowest quality needs {quality}; {self.lower_rate_hint}",
                needed_payload_bytes=quality,
                max_payload_bytes=max_payload_bytes,
            )
        return best, self._params(quality)

    def _decode_rgb(self, payload: bytes, params: dict[str, Any], width: int, height: int) -> np.ndarray:
        scale = params.get("s", 1)
        if scale != self.scale:
            raise BitstreamError(
                f"this {self.name} bitstream says it was coded at scale {scale!r}, but {self.name} codes at "
                f"scale {self.scale}; the bitstream was written by a faulty encoder, re-encode the source image"
            )
        return _decode_pillow(self, payload, self.pil_format, self.coded_size(width, height), width, height)

    def encode(self, image: np.ndarray, bpp: float) -> EncodeResult:
        try:
            return super().encode(image, bpp)
        except _LowestQualityTooLarge as exc:
            # Restate in bits per pixel of the whole container: the header overhead is the same at any rate.
            h, w = image.shape[:2]
            overhead = int(bpp * w * h / 8) - exc.max_payload_bytes
            needed_bpp = 8 * (exc.needed_payload_bytes + overhead) / (w * h)
            raise RateUnreachableError(
                f"{self.name} cannot reach {bpp:g} bpp on this {w}x{h} image (its lowest quality needs "
                f"{math.ceil(needed_bpp * 1000) / 1000:.3f} bpp); {self.lower_rate_hint}"
            ) from None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "format": self.pil_format.lower(), "scale": self.scale}


@register("jpeg")
class JpegCodec(PillowCodec):
    """Baseline JPEG (libjpeg-turbo), 4:2:0, optimized Huffman tables."""

    name = "jpeg"
    pil_format = "JPEG"
    quality_range = (1, 100)  # libjpeg treats 0 as 1
    max_dimension = 65500
    lower_rate_hint = "raise --bpp or use avif, avif-half or avif-quarter, which reach lower rates"

    def _save_options(self, grayscale: bool) -> dict[str, Any]:
        return {"optimize": True, "subsampling": "4:2:0"}


@register("webp")
class WebpCodec(PillowCodec):
    """Lossy WebP (libwebp), slowest and best method."""

    name = "webp"
    pil_format = "WEBP"
    max_dimension = 16383
    codes_grayscale = False  # lossy WebP is always YUV 4:2:0
    lower_rate_hint = "raise --bpp or use avif, avif-half or avif-quarter, which reach lower rates"

    def _save_options(self, grayscale: bool) -> dict[str, Any]:
        return {"method": 6, "lossless": False}


@register("avif")
class AvifCodec(PillowCodec):
    """AVIF (libavif with libaom), 4:2:0 (4:0:0 for grayscale), speed 6."""

    name = "avif"
    pil_format = "AVIF"
    max_dimension = 65536
    lower_rate_hint = "raise --bpp or use avif-half or avif-quarter"
    #: libaom's output depends on the speed preset and on whether it runs one thread or several.
    speed: ClassVar[int] = 6
    threads: ClassVar[int] = 2

    def _save_options(self, grayscale: bool) -> dict[str, Any]:
        return {
            "speed": self.speed,
            "subsampling": "4:0:0" if grayscale else "4:2:0",
            "max_threads": self.threads,
        }


@register("avif-half")
class AvifHalfCodec(AvifCodec):
    """AVIF of the image downscaled by 2, upscaled back on decode."""

    name = "avif-half"
    scale = 2
    lower_rate_hint = "raise --bpp or use avif-quarter"


@register("avif-quarter")
class AvifQuarterCodec(AvifCodec):
    """AVIF of the image downscaled by 4, upscaled back on decode."""

    name = "avif-quarter"
    scale = 4
    lower_rate_hint = "raise --bpp"


@register("avif-best")
class AvifBestCodec(AvifCodec):
    """AVIF tuned the way a careful user tunes it at extreme rates: libaom's slow preset (speed 2), and
    the downscale factor chosen per image among 1, 2/3, 1/2, 1/3 and 1/4 by the quality (PSNR against
    the original) each reaches within the byte budget, tried from the largest down until the quality
    falls (it rises to one best scale and falls after it); the image is upscaled back on decode (Lanczos).

    The strongest classical anchor, and the slowest: every scale is rate-controlled and decoded. Params
    ``{"q": quality, "f": [num, den]}`` (the coded size is ``ceil(side * num / den)``).
    """

    name = "avif-best"
    speed = 2
    #: Downscale factors tried, largest first, as (numerator, denominator).
    factors: ClassVar[tuple[tuple[int, int], ...]] = ((1, 1), (2, 3), (1, 2), (1, 3), (1, 4))
    lower_rate_hint = "raise --bpp"

    def coded_size(self, width: int, height: int, factor: tuple[int, int] = (1, 1)) -> tuple[int, int]:
        num, den = factor
        return max(1, math.ceil(width * num / den)), max(1, math.ceil(height * num / den))

    def _params_probe(self) -> dict[str, Any]:
        return {"q": self.quality_range[1], "f": [2, 3]}

    def _fit(self, rgb: np.ndarray, factor: tuple[int, int], max_payload_bytes: int):
        h, w = rgb.shape[:2]
        cw, ch = self.coded_size(w, h, factor)
        grayscale = bool(np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2]))
        image = Image.fromarray(rgb[:, :, 0] if grayscale else rgb, "L" if grayscale else "RGB")
        if (cw, ch) != (w, h):
            image = image.resize((cw, ch), _RESAMPLE)
        best, quality = self._highest_quality(image, self._save_options(grayscale), max_payload_bytes)
        if best is None:
            return None, quality
        return (best, {"q": quality, "f": list(factor)}), len(best)

    def _encode_rgb(self, rgb: np.ndarray, max_payload_bytes: int) -> tuple[bytes, dict[str, Any]]:
        from coldpress.metrics import psnr

        h, w = rgb.shape[:2]
        if max(w, h) > self.max_dimension:
            raise InputRejected(f"{self.name} cannot code an image of {w}x{h} pixels (its limit is "
                                f"{self.max_dimension} per side); tile the image before archiving")
        best, best_psnr, smallest = None, -math.inf, None
        for factor in self.factors:
            fit, size = self._fit(rgb, factor, max_payload_bytes)
            smallest = size if smallest is None else min(smallest, size)
            if fit is None:
                continue
            quality = psnr(rgb, self._decode_rgb(fit[0], fit[1], w, h))
            if quality > best_psnr:  # ties keep the larger scale
                best, best_psnr = fit, quality
            elif best is not None:
                break  # quality falls as the scale shrinks past its best: smaller scales only lose more
        if best is None:
            raise _LowestQualityTooLarge(
                f"{self.name} cannot fit this {w}x{h} image into {max_payload_bytes} payload bytes at any of its "
                f"scales: the smallest needs {smallest}; {self.lower_rate_hint}",
                needed_payload_bytes=smallest, max_payload_bytes=max_payload_bytes)
        return best

    def _decode_rgb(self, payload: bytes, params: dict[str, Any], width: int, height: int) -> np.ndarray:
        factor = params.get("f")
        if not (isinstance(factor, list) and tuple(factor) in self.factors):
            raise BitstreamError(f"this {self.name} bitstream has an invalid scale factor {factor!r}; it is "
                                 "corrupted: restore it from the archive or a replica")
        return _decode_pillow(self, payload, "AVIF", self.coded_size(width, height, tuple(factor)), width, height)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scale": "per image: " + ", ".join(f"{n}/{d}" for n, d in self.factors),
                "speed": self.speed}


@register("jpeg2000")
class Jpeg2000Codec(PillowCodec):
    """JPEG 2000 (OpenJPEG through Pillow): irreversible 9/7 wavelet, rate mode; rate control searches the
    compression ratio for the largest codestream that fits the budget. The format remote sensing uses
    (Sentinel-2 ships it). Params ``{"r": ratio}``."""

    name = "jpeg2000"
    pil_format = "JPEG2000"
    max_dimension = 65535
    codes_grayscale = True
    lower_rate_hint = "raise --bpp"
    #: Compression ratios searched (log-bisection between them), and the search's steps.
    ratio_range: ClassVar[tuple[float, float]] = (2.0, 20000.0)
    search_steps: ClassVar[int] = 14

    def _params_probe(self) -> dict[str, Any]:
        return {"r": 12345.678}

    def _options(self, image: Image.Image, ratio: float) -> dict[str, Any]:
        levels = max(1, min(6, int(math.log2(max(1, min(image.size)))) - 1))
        return {"quality_mode": "rates", "quality_layers": [ratio], "irreversible": True, "no_jp2": True,
                "num_resolutions": levels}

    def _save_j2k(self, image: Image.Image, ratio: float) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="JPEG2000", **self._options(image, ratio))
        return buf.getvalue()

    def _encode_rgb(self, rgb: np.ndarray, max_payload_bytes: int) -> tuple[bytes, dict[str, Any]]:
        h, w = rgb.shape[:2]
        image, _ = self._prepare(rgb)
        lo, hi = (math.log(r) for r in self.ratio_range)
        smallest = self._save_j2k(image, math.exp(hi))
        if len(smallest) > max_payload_bytes:
            raise _LowestQualityTooLarge(
                f"{self.name} cannot fit this {w}x{h} image into {max_payload_bytes} payload bytes: its "
                f"highest compression needs {len(smallest)}; {self.lower_rate_hint}",
                needed_payload_bytes=len(smallest), max_payload_bytes=max_payload_bytes)
        best, best_ratio = smallest, math.exp(hi)
        for _ in range(self.search_steps):  # the smallest ratio (best quality) whose codestream fits
            mid = (lo + hi) / 2
            ratio = round(math.exp(mid), 3)
            payload = self._save_j2k(image, ratio)
            if len(payload) <= max_payload_bytes:
                best, best_ratio, hi = payload, ratio, mid
            else:
                lo = mid
        return best, {"r": round(best_ratio, 3)}

    def _decode_rgb(self, payload: bytes, params: dict[str, Any], width: int, height: int) -> np.ndarray:
        return _decode_pillow(self, payload, "JPEG2000", self.coded_size(width, height), width, height)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "openjpeg": _openjpeg_version()}


def _openjpeg_version() -> str:
    from PIL import features

    return str(features.version("jpg_2000") or "")


def _decode_pillow(codec: Codec, payload: bytes, pil_format: str, expected: tuple[int, int], width: int,
                   height: int) -> np.ndarray:
    """Decode a payload of ``pil_format`` holding an ``expected``-sized image, resized to width x height."""
    try:
        with warnings.catch_warnings():
            # The size is checked against the header's, which is what bounds the work.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(payload), formats=[pil_format])
            if image.size != expected:
                raise BitstreamError(
                    f"the {codec.name} payload holds a {image.size[0]}x{image.size[1]} image where the header of "
                    f"this {width}x{height} bitstream needs {expected[0]}x{expected[1]}; the bitstream is "
                    "corrupted, restore it from the archive or a replica")
            image.load()
            image = image.convert("RGB")
    except BitstreamError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever Pillow raises, the payload does not decode
        raise BitstreamError(
            f"the {codec.name} payload of this bitstream does not decode as {pil_format} ({type(exc).__name__}: "
            f"{exc}); the bitstream is corrupted, restore it from the archive or a replica, or re-encode the "
            "source image") from None
    if image.size != (width, height):
        image = image.resize((width, height), _RESAMPLE)
    return np.asarray(image, dtype=np.uint8)
