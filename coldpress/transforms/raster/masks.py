"""Lossless code of the valid-data masks (a bit plane per tile)."""

from __future__ import annotations

import zlib

import numpy as np

from coldpress.codec.container import read_varint, varint
from coldpress.errors import BitstreamError


def _zigzag(n: int) -> int:
    return (n << 1) if n >= 0 else ((-n << 1) - 1)


def _pack_mask(valid: np.ndarray) -> bytes:
    """Lossless code of a boolean plane: per row, the columns where the value changes (the row starts
    False), as gaps within the row or, when the row has as many changes as the row above, as
    zigzag differences from that row's; unsigned LEB128 varints, then zlib level 9."""
    valid = np.asarray(valid, bool)
    h, w = valid.shape
    change = np.diff(np.concatenate([np.zeros((h, 1), np.int8), valid.astype(np.int8)], axis=1), axis=1) != 0
    rows, cols = np.nonzero(change)
    per_row = np.split(cols, np.cumsum(np.bincount(rows, minlength=h))[:-1])
    out = bytearray()
    prev: list[int] = []
    for r in range(h):
        cur = per_row[r].tolist()
        same = bool(cur) and len(cur) == len(prev)
        out += varint(len(cur) * 2 + int(same))
        if same:
            for c, p in zip(cur, prev):
                out += varint(_zigzag(c - p))
        else:
            last = 0
            for c in cur:
                out += varint(c - last)
                last = c
        prev = cur
    return zlib.compress(bytes(out), 9)


def _unpack_mask(blob: bytes, h: int, w: int) -> np.ndarray:
    try:
        raw = zlib.decompress(blob)
    except zlib.error as exc:
        raise BitstreamError(f"a mask of this raster package does not decode ({exc}); restore the archive from a replica") from None
    toggles = np.zeros((h, w + 1), np.int8)
    pos = 0
    prev: list[int] = []
    try:
        for r in range(h):
            n, pos = read_varint(raw, pos, "this raster package")
            count, same = n >> 1, n & 1
            cur = []
            last = 0
            for k in range(count):
                v, pos = read_varint(raw, pos, "this raster package")
                if same:
                    cur.append(prev[k] + ((v >> 1) if not v & 1 else -((v + 1) >> 1)))
                else:
                    last += v
                    cur.append(last)
            toggles[r, cur] = 1
            prev = cur
    except (IndexError, BitstreamError):
        raise BitstreamError("a mask of this raster package is truncated or corrupt; restore the archive from a replica") from None
    return (np.cumsum(toggles[:, :w], axis=1) % 2).astype(bool)
