"""The diffusion decoder: refines a coarse reconstruction in 1-5 relay-residual steps.

``DiffusionDecoder.refine(coarse, bpp, seed)`` takes the coarse decode (H, W, 3 uint8) of any bitstream,
its rate and a seed, and returns the refined image. ``decode_with_diffusion(bitstream, ...)`` decodes a
bitstream through its codec's coarse decoder and refines it: the bitstream, container and entropy model
are untouched, so every archive already written restores through it. The seed is the bitstream's sha256,
so a restore is reproducible: the same bitstream, decoder weights, steps and detail give the same pixels
in any process and with any thread count. On CPU the UNet runs in float64: in float32, oneDNN's and the
GEMMs' kernels change with the thread count and so do the last bits of a convolution (measured: up to
4e-6 between 1 and 2 threads, enough to move a pixel by one level), while float64 differences (~1e-14)
never reach a rounding. The scheduler steps and the noise are float32 and element-wise (exact on every
device; the noise is drawn on the CPU), and on CUDA the UNet runs in float32 with TF32 off, so GPU pixels
stay within a level of the CPU's.

Large images run the UNet tile by tile (``tile`` x ``tile`` pixels with a ``halo``, both fixed per decoder:
part of what defines its pixels), while the scheduler steps and the noise cover the whole image.
"""

from __future__ import annotations

import copy
import hashlib
import math
from typing import Any

import numpy as np
import torch

from coldpress.codec.diffusion.denoiser import pad_to
from coldpress.codec.diffusion.relay import MAX_STEPS, sample
from coldpress.codec.diffusion.weights import LoadedDecoder, load_decoder
from coldpress.errors import ColdpressError

#: UNet tiles (pixels) and their halo for images larger than a tile on a side.
TILE = 1024
HALO = 64
DETAIL_RANGE = (0.0, 4.0)


def seed_of(bitstream: bytes) -> int:
    """The decode's noise seed: the first 8 bytes of the bitstream's sha256."""
    return int.from_bytes(hashlib.sha256(bitstream).digest()[:8], "little") & ((1 << 63) - 1)


def check_knobs(steps: int | None, detail: float | None, default_steps: int) -> tuple[int, float]:
    steps = default_steps if steps is None else steps
    detail = 1.0 if detail is None else detail
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_STEPS:
        raise ColdpressError(f"--steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    detail = float(detail)
    if not (math.isfinite(detail) and DETAIL_RANGE[0] <= detail <= DETAIL_RANGE[1]):
        raise ColdpressError(f"--detail must be a number from {DETAIL_RANGE[0]:g} (the coarse decode) to "
                             f"{DETAIL_RANGE[1]:g}, got {detail!r}; 1 is the trained decoder")
    return int(steps), detail


class DiffusionDecoder:
    """A loaded diffusion decoder on one device."""

    def __init__(self, decoder: str | None = None, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.loaded: LoadedDecoder = load_decoder(decoder, self.device)
        self.cfg = self.loaded.cfg
        self.dtype = torch.float64 if self.device.type == "cpu" else torch.float32
        self.net = self.loaded.net if self.dtype == torch.float32 else copy.deepcopy(self.loaded.net).to(self.dtype)

    @property
    def decoder_id(self) -> str:
        return self.loaded.decoder_id

    def describe(self, steps: int | None = None, detail: float | None = None) -> dict[str, Any]:
        steps, detail = check_knobs(steps, detail, self.cfg.default_steps)
        return {"decoder": "diffusion", "decoder_id": self.decoder_id, "decoder_sha256": self.loaded.sha256,
                "steps": steps, "detail": detail}

    def _denoise_tiled(self, coarse: torch.Tensor, bpp: float):
        align = self.cfg.align
        tile, halo = TILE, HALO
        dtype = self.dtype
        coarse = coarse.to(dtype)

        def net(x: torch.Tensor, c: torch.Tensor, t: int, rate: float) -> torch.Tensor:
            return self.net(x.to(dtype), c, t, rate).float()

        def denoise(x_t: torch.Tensor, t: int) -> torch.Tensor:
            _, _, h, w = x_t.shape
            if h <= tile and w <= tile:
                return net(x_t, coarse, t, bpp)
            out = torch.empty_like(x_t)
            for top in range(0, h, tile):
                for left in range(0, w, tile):
                    t0, l0 = max(0, top - halo), max(0, left - halo)
                    t1, l1 = min(h, top + tile + halo), min(w, left + tile + halo)
                    # Tile bounds are multiples of align (tile, halo and the padded size are).
                    y = net(x_t[:, :, t0:t1, l0:l1], coarse[:, :, t0:t1, l0:l1], t, bpp)
                    th, tw = min(tile, h - top), min(tile, w - left)
                    out[:, :, top:top + th, left:left + tw] = y[:, :, top - t0:top - t0 + th, left - l0:left - l0 + tw]
            return out

        assert tile % align == 0 and halo % align == 0
        return denoise

    @torch.no_grad()
    def refine(self, coarse: np.ndarray, bpp: float, seed: int, steps: int | None = None,
               detail: float | None = None) -> np.ndarray:
        """The refined (H, W, 3) uint8 image of a coarse decode at ``bpp`` bits per pixel."""
        steps, detail = check_knobs(steps, detail, self.cfg.default_steps)
        if coarse.ndim != 3 or coarse.shape[2] != 3 or coarse.dtype != np.uint8:
            raise ColdpressError(f"the diffusion decoder refines (H, W, 3) uint8 images, got {coarse.shape} {coarse.dtype}")
        if detail == 0.0:
            return coarse.copy()
        if self.device.type == "cuda" and torch.backends.cudnn.allow_tf32:
            raise ColdpressError("the diffusion decoder needs TF32 off on CUDA (TF32 convolutions would round "
                                 "differently from every CPU): set torch.backends.cudnn.allow_tf32 = False")
        h, w = coarse.shape[:2]
        c = torch.from_numpy(np.array(coarse)).permute(2, 0, 1)[None].float().div(127.5).sub(1)
        c = pad_to(c, self.cfg.align).to(self.device)
        generator = torch.Generator("cpu").manual_seed(int(seed))
        x0 = sample(self._denoise_tiled(c, bpp), self.cfg, c, steps, detail, generator)
        out = x0[0, :, :h, :w].add(1).mul(127.5).clamp(0, 255).round().to(torch.uint8)
        return np.ascontiguousarray(out.permute(1, 2, 0).cpu().numpy())


_DECODERS: dict[tuple[str | None, str | None], DiffusionDecoder] = {}


def get_decoder(decoder: str | None = None, device: str | None = None) -> DiffusionDecoder:
    key = (decoder, device)
    if key not in _DECODERS:
        _DECODERS[key] = DiffusionDecoder(decoder, device)
    return _DECODERS[key]


def bitstream_bpp(bitstream: bytes, width: int, height: int) -> float:
    return 8.0 * len(bitstream) / max(1, width * height)
