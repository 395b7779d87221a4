"""What an encode computed that the verify-on-write decode of its bitstream, which follows, computes again.

An archive row is written only after its bitstream has been decoded (verify-on-write), on the codec
that has just encoded it. ``DecodeMemo`` keeps, per codec instance and thread, two kinds of small,
bounded entries for that decode:

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

Entries belong to the thread that made them (the verify decode runs in the encode's thread, and other
threads' encodes never evict them); an encode starts by dropping its thread's earlier entries
(``begin``), a decode removes what it takes, and ``clear`` drops every thread's (a restore benchmark calls
it so that nothing from an encode is reused).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: Reconstructions kept: at most this many, of images up to this many pixels.
PIXEL_ENTRIES, MAX_PIXELS = 2, 1 << 24
#: Coded latents kept per thread (rate control codes one or two knobs per scale, the scale search two
#: scales): at most this many, of latents up to this many values (16 bytes each: 4 megapixels, 3 M values,
#: about 50 MB an entry).
LATENT_ENTRIES, MAX_LATENT_VALUES = 4, 1 << 22


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


class _Entries:
    """One thread's entries (weakly listed by the memo: they go with their thread)."""

    __slots__ = ("pixels", "latents", "__weakref__")

    def __init__(self) -> None:
        self.pixels: dict[tuple, np.ndarray] = {}
        self.latents: dict[bytes, CodedLatent] = {}


def _bounded(entries: dict, key, value, limit: int) -> None:
    entries.pop(key, None)
    entries[key] = value
    while len(entries) > limit:
        entries.pop(next(iter(entries)))


class DecodeMemo:
    """Bounded memo, per thread, of what encodes computed, for the decodes that follow them."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._every: weakref.WeakSet[_Entries] = weakref.WeakSet()  # every live thread's, for ``clear``
        self._lock = threading.Lock()  # ``clear`` reaches other threads' entries

    def _mine(self) -> _Entries:
        mine = getattr(self._local, "entries", None)
        if mine is None:
            mine = self._local.entries = _Entries()
            self._every.add(mine)
        return mine

    def begin(self) -> None:
        """An encode starts on this thread: what its earlier encodes kept is not needed any more."""
        with self._lock:
            mine = self._mine()
            mine.pixels.clear()
            mine.latents.clear()

    def keep_pixels(self, payload: bytes, params: Any, width: int, height: int, pixels: np.ndarray) -> None:
        if width * height <= MAX_PIXELS:
            with self._lock:
                _bounded(self._mine().pixels, _pixel_key(payload, params, width, height), pixels, PIXEL_ENTRIES)

    def take_pixels(self, payload: bytes, params: Any, width: int, height: int) -> np.ndarray | None:
        """The kept reconstruction of this decode, if any (its coded latent is then not needed either)."""
        with self._lock:
            mine = self._mine()
            found = mine.pixels.pop(_pixel_key(payload, params, width, height), None)
            if found is not None:
                mine.latents.pop(bytes(payload), None)
            return found

    def keep_latent(self, payload: bytes, coded: CodedLatent) -> None:
        if coded.means.numel() <= MAX_LATENT_VALUES:
            with self._lock:
                _bounded(self._mine().latents, bytes(payload), coded, LATENT_ENTRIES)

    def take_latent(self, payload: bytes, keep: bool = False) -> CodedLatent | None:
        """The coding that made ``payload`` on this thread, if kept; removed unless ``keep`` (a preview,
        which a verify decode of the same payload follows: it moves to the newest place instead)."""
        with self._lock:
            latents = self._mine().latents
            found = latents.pop(bytes(payload), None)
            if found is not None and keep:
                latents[bytes(payload)] = found
            return found

    def clear(self) -> None:
        """Drop every thread's entries."""
        with self._lock:
            for entries in list(self._every):
                entries.pixels.clear()
                entries.latents.clear()
