"""The contract every codec implements.

A codec turns 8-bit images into container bytes at a target bits per pixel, and container bytes back
into images. Images are numpy uint8 arrays: (H, W) for "L", (H, W, 2) for "LA", (H, W, 3) for "RGB",
(H, W, 4) for "RGBA". Codecs code colour as RGB; the base class handles the rest once for all codecs:

- grayscale is coded as RGB and returned as "L" (the mean of the decoded channels);
- alpha: a fully opaque alpha channel is dropped and restored as opaque; any other alpha plane is
  stored losslessly (PNG) in the container's alpha section, and its bytes count towards the rate.

Subclasses implement ``_encode_rgb`` (fit an RGB image into a byte budget) and ``_decode_rgb``.
The rate is measured on the whole container, header included: ``achieved_bpp = 8 * len(bytes) / (W*H)``.
"""

from __future__ import annotations

import abc
import io
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
from PIL import Image

from coldpress.codec import container
from coldpress.codec.container import Bitstream
from coldpress.errors import BitstreamError, ModelMismatchError, RateUnreachableError


def check_bpp(bpp: Any) -> float:
    """``bpp`` as a float when it is a finite positive number (not a bool or a string), else
    ValueError saying what to pass: the one check of a target rate, for every codec, engine and job."""
    if isinstance(bpp, bool) or not isinstance(bpp, numbers.Real) or not (math.isfinite(bpp) and bpp > 0):
        raise ValueError(f"bpp must be a positive number of bits per pixel, got {bpp!r}; pass e.g. 0.05 (--bpp 0.05)")
    return float(bpp)


def image_mode(image: np.ndarray) -> str:
    """The container mode ("L", "LA", "RGB", "RGBA") of a uint8 image array."""
    if image.dtype != np.uint8:
        raise ValueError(f"codecs take uint8 images, got {image.dtype}; convert with transforms.read")
    if image.ndim == 2:
        return "L"
    if image.ndim == 3 and image.shape[2] in (2, 3, 4):
        return {2: "LA", 3: "RGB", 4: "RGBA"}[image.shape[2]]
    raise ValueError(f"image array of shape {image.shape} is not L, LA, RGB or RGBA")


def split_alpha(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB array, alpha plane or None) of any supported image array."""
    mode = image_mode(image)
    if mode == "L":
        return np.repeat(image[:, :, None], 3, axis=2), None
    if mode == "LA":
        return np.repeat(image[:, :, :1], 3, axis=2), image[:, :, 1]
    if mode == "RGB":
        return image, None
    return np.ascontiguousarray(image[:, :, :3]), image[:, :, 3]


def join_alpha(rgb: np.ndarray, mode: str, alpha: np.ndarray | None) -> np.ndarray:
    """Rebuild an image of ``mode`` from decoded RGB and an alpha plane (None: opaque)."""
    h, w = rgb.shape[:2]
    if mode in ("L", "LA"):
        gray = np.round(rgb.astype(np.float32).mean(axis=2)).astype(np.uint8)
        if mode == "L":
            return gray
        a = alpha if alpha is not None else np.full((h, w), 255, np.uint8)
        return np.stack([gray, a], axis=2)
    if mode == "RGB":
        return rgb
    a = alpha if alpha is not None else np.full((h, w), 255, np.uint8)
    return np.concatenate([rgb, a[:, :, None]], axis=2)


def _png_bytes(plane: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(plane, "L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@dataclass(frozen=True)
class EncodeResult:
    """One encoded image: the container bytes and what the rate control reached."""

    bitstream: bytes
    width: int
    height: int
    target_bpp: float
    params: dict[str, Any]

    @property
    def achieved_bpp(self) -> float:
        return 8.0 * len(self.bitstream) / (self.width * self.height)


def checked_window(window, width: int, height: int) -> tuple[int, int, int, int]:
    """``window`` (col, row, width, height) as ints, refused (ValueError) unless inside a ``width`` x ``height`` image."""
    col, row, w, h = (int(v) for v in window)
    if w <= 0 or h <= 0 or col < 0 or row < 0 or col + w > width or row + h > height:
        raise ValueError(f"window {tuple(window)} is not inside this {width}x{height} image; pass "
                         "(col, row, width, height) with a positive size within it")
    return col, row, w, h


class Codec(abc.ABC):
    """A codec: name, model identity, and the encode/decode pair."""

    name: ClassVar[str]
    #: Model identity recorded in every bitstream; empty for reference codecs.
    model_id: str = ""
    #: First 8 bytes of the sha256 of the weights; empty for reference codecs.
    weights_hash: bytes = b""
    #: Class of device the codec computes on ("cpu", "cuda"); recorded per archive row.
    device_class: str = "cpu"

    # -- what subclasses implement -------------------------------------------------------------
    @abc.abstractmethod
    def _encode_rgb(self, rgb: np.ndarray, max_payload_bytes: int) -> tuple[bytes, dict[str, Any]]:
        """Encode an (H, W, 3) uint8 image into at most ``max_payload_bytes``.

        Returns the payload and the rate parameters needed to decode it. Raises
        RateUnreachableError when even the lowest rate does not fit.
        """

    @abc.abstractmethod
    def _decode_rgb(self, payload: bytes, params: dict[str, Any], width: int, height: int) -> np.ndarray:
        """Decode a payload made by ``_encode_rgb`` into an (H, W, 3) uint8 image."""

    def _decode_rgb_window(self, payload: bytes, params: dict[str, Any], width: int, height: int,
                           window: tuple[int, int, int, int]) -> np.ndarray:
        """The (h, w, 3) pixels of ``window`` (col, row, w, h) of ``_decode_rgb``'s image; codecs that can
        compute a part of the image alone (the learned codec) override this to decode less."""
        col, row, w, h = window
        rgb = self._decode_rgb(payload, params, width, height)
        self._check_decoded(rgb, width, height)
        return rgb[row:row + h, col:col + w]

    # -- the public contract -------------------------------------------------------------------
    def container_overhead(self, width: int, height: int, mode: str = "RGB", alpha: bytes = b"") -> int:
        """Bytes of a ``bpp`` budget that ``encode`` keeps for the container: the header's size plus room
        for the payload length varint and params that grow a little (the payload gets the rest)."""
        probe = Bitstream(
            codec=self.name, width=width, height=height, mode=mode, payload=b"", params=self._params_probe(),
            model_id=self.model_id, weights_hash=self.weights_hash, alpha=alpha,
        )
        return container.header_size(probe) + 8

    def encode(self, image: np.ndarray, bpp: float) -> EncodeResult:
        """Encode one image at or below ``bpp`` bits per pixel (container bytes included)."""
        bpp = check_bpp(bpp)
        mode = image_mode(image)
        h, w = image.shape[:2]
        rgb, alpha = split_alpha(image)
        alpha_bytes = b""
        if alpha is not None and not np.all(alpha == 255):
            alpha_bytes = _png_bytes(np.ascontiguousarray(alpha))
        budget = int(bpp * w * h / 8)
        overhead = self.container_overhead(w, h, mode, alpha_bytes)
        max_payload = budget - overhead
        if max_payload <= 0:
            what = "the container header and alpha plane together take" if alpha_bytes else "the container header takes"
            reason = f"{what} {overhead} bytes"
            raise RateUnreachableError(
                f"{self.name} cannot fit this {w}x{h} image into {bpp} bpp ({budget} bytes): {reason}; "
                f"raise --bpp to at least {8 * (overhead + 1) / (w * h):.3g}"
            )
        payload, params = self._encode_rgb(np.ascontiguousarray(rgb), max_payload)
        data = container.pack(
            Bitstream(
                codec=self.name, width=w, height=h, mode=mode, payload=payload, params=params,
                model_id=self.model_id, weights_hash=self.weights_hash, alpha=alpha_bytes,
            )
        )
        if len(data) > budget:
            raise RateUnreachableError(
                f"{self.name} produced {len(data)} bytes for a {budget}-byte budget ({bpp} bpp) on this "
                f"{w}x{h} image; raise --bpp or choose a codec that reaches lower rates"
            )
        return EncodeResult(bitstream=data, width=w, height=h, target_bpp=float(bpp), params=params)

    def decode(self, data: bytes, refine: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """Decode container bytes made by this codec (and model) back into an image array.

        ``refine``, when given, maps the decoded (H, W, 3) colour image to the one returned (the
        diffusion decoder's refinement), before the alpha plane and the mode are applied."""
        b = container.unpack(data)
        self.check_compatible(b)
        rgb = self._decode_rgb(b.payload, b.params, b.width, b.height)
        self._check_decoded(rgb, b.width, b.height)
        if refine is not None:
            rgb = refine(rgb)
        return join_alpha(rgb, b.mode, self._alpha(b))

    def decode_window(self, data: bytes, window: tuple[int, int, int, int]) -> np.ndarray:
        """The pixels of ``window`` (col, row, width, height) of ``decode(data)``, exactly, computing only
        what the window needs where the codec can (region restores of tiled rasters)."""
        b = container.unpack(data)
        self.check_compatible(b)
        col, row, w, h = checked_window(window, b.width, b.height)
        rgb = self._decode_rgb_window(b.payload, b.params, b.width, b.height, (col, row, w, h))
        self._check_decoded(rgb, w, h, "the window asks for")
        alpha = self._alpha(b)
        return join_alpha(rgb, b.mode, None if alpha is None else alpha[row:row + h, col:col + w])

    def _check_decoded(self, rgb: np.ndarray, width: int, height: int, expected: str = "the header says") -> None:
        if rgb.shape != (height, width, 3) or rgb.dtype != np.uint8:
            raise BitstreamError(
                f"{self.name} decoded a {rgb.shape} {rgb.dtype} array where {expected} "
                f"{height}x{width}x3 uint8; the bitstream is corrupted, restore it from a replica"
            )

    @staticmethod
    def _alpha(b: Bitstream) -> np.ndarray | None:
        if not b.alpha:
            return None
        try:
            alpha = np.asarray(Image.open(io.BytesIO(b.alpha)).convert("L"))
        except Exception as exc:  # noqa: BLE001 - any PIL failure means a broken alpha section
            raise BitstreamError(f"the alpha plane of this bitstream does not decode ({exc})") from None
        if alpha.shape != (b.height, b.width):
            raise BitstreamError("the alpha plane's size does not match the image; the bitstream is corrupted")
        return alpha

    # -- helpers -------------------------------------------------------------------------------
    def check_compatible(self, b: Bitstream) -> None:
        """Refuse a bitstream made by another codec or model, naming what it needs."""
        if b.codec != self.name:
            raise ModelMismatchError(
                f"this bitstream was made by codec {b.codec!r}, not {self.name!r}; decode it with "
                f"coldpress.codec.get_codec({b.codec!r}) (or coldpress.codec.decode_bitstream)"
            )
        if b.model_id != self.model_id or b.weights_hash != self.weights_hash:
            raise ModelMismatchError(
                f"this bitstream needs model {b.model_id!r} (weights {b.weights_hash.hex() or 'none'}), "
                f"but codec {self.name!r} has model {self.model_id!r} (weights "
                f"{self.weights_hash.hex() or 'none'}) loaded; to decode it, install the coldpress version "
                f"that ships {b.model_id!r}, or put its weights file {b.model_id}.safetensors in a folder "
                "named by $COLDPRESS_MODELS (or pass --models DIR)"
            )

    @classmethod
    def known_models(cls) -> list[str]:
        """Model ids this codec can load through its ``model`` option (none for reference codecs)."""
        return []

    def _params_probe(self) -> dict[str, Any]:
        """Params of typical size, used to estimate the header before the payload exists."""
        return {}

    def options(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this codec elsewhere (``get_codec(self.name, **options)``): how
        engines give their workers the same codec, model file and settings as the launcher's."""
        return {}

    def forget_decodes(self) -> None:
        """Drop whatever an encode kept for the decode that verifies it (nothing, unless a codec keeps
        something): benchmarks call it to time a restore."""

    def decode_device_kind(self) -> str | None:
        """The kind of device that decides this codec's decoded pixels, where another kind may round a
        few samples one level the other way (float32 synthesis), or None where decoded pixels are the
        same on every device. Recorded per archive row (``decode_device_kind`` in its metadata), so that
        verify holds a row decoded on its writer's kind of device to exactly the recorded pixels."""
        return None

    def describe(self) -> dict[str, Any]:
        """Identity for manifests and archive rows."""
        return {"codec": self.name, "model_id": self.model_id, "weights_hash": self.weights_hash.hex()}
