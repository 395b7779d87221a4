"""What an encode computed that the verify-on-write decode of its bitstream, which follows, computes again.

An archive row is written only after its bitstream has been decoded (verify-on-write), on the codec
that has just encoded it. ``DecodeMemo`` keeps, per codec instance, two kinds of small, bounded entries
for that decode:

- **pixels**: the reconstructions the scale search's preview decoder made. For float32 models the preview
  is the decode itself (same networks, precision and tiling, from the payload's bytes), so the verify
  decode of the chosen bitstream returns them instead of running the synthesis again.
- **coded latents**: for each real coding of a latent, the hyper-latent ``z_hat`` the encoder decoded back,
  the entropy parameters it derived (means and scale indexes of every position, fixed point, exact) and
  the anchors it coded. The decode still range-decodes every bit of the payload and synthesises the
  pixels; it takes the encoder's parameters only where their inputs equal what it has just decoded
  (``z_hat``; the anchors, for the checkerboard's second pass), so its pixels are those of a decode without
  the memo, and a damaged or mis-written bitstream is caught as before. At 4 megapixels this skips the
  fixed-point hyper-synthesis and context (about 1.4 of the decode's 9 s on 2 Zen 3 cores).

Entries are taken (removed) by the decode that uses them; ``clear`` drops them all (a restore benchmark
calls it so that nothing from an encode is reused).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: Reconstructions kept: at most this many, of images up to this many pixels.
PIXEL_ENTRIES, MAX_PIXELS = 2, 1 << 24
#: Coded latents kept (rate control codes one to three knobs per scale): at most this many, of latents
#: up to this many values (4 megapixels: 3 M, about 60 MB an entry).
LATENT_ENTRIES, MAX_LATENT_VALUES = 3, 1 << 23


@dataclass(frozen=True)
class CodedLatent:
    """One real coding of a latent, as its decoder will derive it."""

    z_hat: torch.Tensor  #: the hyper-latent decoded back from its string
    means: torch.Tensor  #: float64 means of every latent position (the context's on the non-anchors)
    indexes: torch.Tensor  #: int32 scale indexes of every position
    anchors: torch.Tensor | None  #: the coded latent on the checkerboard's anchors (None: no context)


def _pixel_key(payload: bytes, params: Any, width: int, height: int) -> tuple | None:
    """The key of a decode (None for parameters no coding made: the decode rejects them)."""
    try:
        return bytes(payload), int(params["q"]), int(params["s"]), width, height
    except (KeyError, TypeError, ValueError):
        return None


class DecodeMemo:
    """Bounded, thread-safe memo of what encodes computed, for the decodes that follow them."""

    def __init__(self) -> None:
        self._pixels: dict[tuple, np.ndarray] = {}
        self._latents: dict[bytes, CodedLatent] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _bounded(entries: dict, key, value, limit: int) -> None:
        entries.pop(key, None)
        entries[key] = value
        while len(entries) > limit:
            entries.pop(next(iter(entries)))

    def keep_pixels(self, payload: bytes, params: Any, width: int, height: int, pixels: np.ndarray) -> None:
        if width * height <= MAX_PIXELS:
            with self._lock:
                self._bounded(self._pixels, _pixel_key(payload, params, width, height), pixels, PIXEL_ENTRIES)

    def take_pixels(self, payload: bytes, params: Any, width: int, height: int) -> np.ndarray | None:
        with self._lock:
            return self._pixels.pop(_pixel_key(payload, params, width, height), None)

    def keep_latent(self, payload: bytes, coded: CodedLatent) -> None:
        if coded.means.numel() <= MAX_LATENT_VALUES:
            with self._lock:
                self._bounded(self._latents, bytes(payload), coded, LATENT_ENTRIES)

    def take_latent(self, payload: bytes, keep: bool = False) -> CodedLatent | None:
        """The coding that made ``payload``, if kept; removed unless ``keep`` (a preview, which a verify
        decode of the same payload follows)."""
        with self._lock:
            key = bytes(payload)
            return self._latents.get(key) if keep else self._latents.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._pixels.clear()
            self._latents.clear()
