"""The raster package (``CPRT``, docs/FORMAT.md): header, tile index, masks and coded band groups,
and decoding it tile by tile."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from coldpress.codec.container import varint
from coldpress.errors import BitstreamError
from coldpress.transforms.raster.bounds import _bad, check_decode, read_header
from coldpress.transforms.raster.mapping import _apply_validity, _from8
from coldpress.transforms.raster.masks import _unpack_mask
from coldpress.transforms.raster.metadata import _from_json_number

RASTER_MAGIC = b"CPRT"
#: The newest package version read and written: 2 has tiles coded with an ``overlap`` (header key);
#: packages without one (a single tile, or written before) stay version 1.
RASTER_VERSION = 2
#: ``mode`` column of raster rows.
RASTER_MODE = "RASTER"


def pack_package(header: dict[str, Any], blobs: list[bytes]) -> bytes:
    head = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    version = 2 if header.get("overlap") else 1
    body = bytes([version]) + varint(len(head)) + head + b"".join(blobs)
    data = RASTER_MAGIC + body
    return data + struct.pack(">I", zlib.crc32(data) & 0xFFFFFFFF)


def is_package(data: bytes) -> bool:
    return bytes(data[:4]) == RASTER_MAGIC


@dataclass
class Package:
    header: dict[str, Any]
    data: bytes
    #: Per tile: {"mask": (off, len), "band_masks": {b: (off, len)}, "parts": [(off, len), ...]}.
    spans: list[dict[str, Any]]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.header["dtype"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.header["height"], self.header["width"], self.header["bands"]


def unpack_package(data: bytes) -> Package:
    """The header and tile index of raster package ``data``, checked: its CRC32, then its header's
    declarations (``bounds.read_header``: size, bands, sample type, tiles, within the decode bounds),
    then every tile's lengths against the bytes the package holds, so that a hostile or damaged
    package is refused (BitstreamError) before anything walks or allocates for what it declares."""
    data = bytes(data)
    if not is_package(data):
        raise BitstreamError("this is not a coldpress raster package (magic CPRT); the archive row is corrupt")
    if len(data) < 10:
        raise BitstreamError("this raster package is truncated; restore it from a replica")
    if struct.unpack(">I", data[-4:])[0] != zlib.crc32(data[:-4]) & 0xFFFFFFFF:
        raise BitstreamError("this raster package fails its CRC32 check; it is corrupt: restore the archive from a replica")
    version = data[4]
    if version > RASTER_VERSION:
        raise BitstreamError(f"raster package version {version} is newer than this coldpress reads ({RASTER_VERSION}); upgrade coldpress")
    header, pos = read_header(data)
    start, end = pos, len(data) - 4
    spans = []
    for ti, t in enumerate(header["tiles"]):
        entry: dict[str, Any] = {}
        entry["mask"] = (pos, t["mask"])
        pos += t["mask"]
        entry["band_masks"] = {}
        for b, length in sorted(((int(k), v) for k, v in t.get("band_masks", {}).items())):
            entry["band_masks"][b] = (pos, length)
            pos += length
        entry["parts"] = []
        for length in t["parts"]:
            entry["parts"].append((pos, length))
            pos += length
        if pos > end:  # lengths are whole numbers (read_header): stop at the first tile past the end
            raise _bad(f"tile {ti} of {len(header['tiles']):,} in its tile index ends {pos - start:,} bytes into "
                       f"the tile data, past the {end - start:,} bytes the package holds")
        spans.append(entry)
    if pos != end:
        raise _bad(f"its tile index accounts for {pos - start:,} bytes of tile data, but the package holds "
                   f"{end - start:,}")
    return Package(header=header, data=data, spans=spans)


def masks_from_blobs(mask_blob: bytes, band_blobs: dict[int, bytes], h: int, w: int
                     ) -> tuple[np.ndarray | None, dict[int, np.ndarray]]:
    """(dataset valid mask or None when all valid, {band: its own valid mask where it differs}) of a tile."""
    mask = _unpack_mask(mask_blob, h, w) if mask_blob else None
    base = mask if mask is not None else np.ones((h, w), bool)
    return mask, {b: base ^ _unpack_mask(blob, h, w) for b, blob in sorted(band_blobs.items())}


def _tile_masks(pkg: Package, ti: int) -> tuple[np.ndarray | None, dict[int, np.ndarray]]:
    t = pkg.header["tiles"][ti]
    off, length = pkg.spans[ti]["mask"]
    bands = {b: pkg.data[o:o + n] for b, (o, n) in pkg.spans[ti]["band_masks"].items()}
    return masks_from_blobs(pkg.data[off:off + length], bands, t["h"], t["w"])


def coded_window(header: dict[str, Any], ti: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) of what tile ``ti``'s groups code: the tile, plus ``overlap`` px on every side that
    has a neighbouring tile (packages of version 2; none in version 1)."""
    t = header["tiles"][ti]
    m = int(header.get("overlap", 0))
    x0, y0 = t["x"] - min(m, t["x"]), t["y"] - min(m, t["y"])
    x1 = t["x"] + t["w"] + min(m, header["width"] - t["x"] - t["w"])
    y1 = t["y"] + t["h"] + min(m, header["height"] - t["y"] - t["h"])
    return x0, y0, x1 - x0, y1 - y0


def _ramp(start: int, core0: int, core1: int, end: int) -> np.ndarray:
    """Weights along one axis of a coded window [start, end) around the tile [core0, core1): 1 inside,
    rising linearly across [core0 - m, core0 + m) where the window extends m px before the tile (and
    falling likewise after it), so that the two tiles over an edge have weights summing to 1."""
    pos = np.arange(start, end, dtype=np.float64) + 0.5
    w = np.ones(end - start)
    m0, m1 = core0 - start, end - core1
    if m0:
        w = np.minimum(w, np.clip((pos - (core0 - m0)) / (2 * m0), 0.0, 1.0))
    if m1:
        w = np.minimum(w, np.clip((core1 + m1 - pos) / (2 * m1), 0.0, 1.0))
    return w.astype(np.float32)


#: A region restore decodes the part of a tile it needs alone when that part is less than this fraction of
#: the tile's coded window (``TileDecoder.partial``); larger parts decode the whole window.
PARTIAL_DECODE_FRACTION = 0.5


class TileDecoder:
    """Decodes the tiles of a raster package (or of one being written) and composes regions from them.

    With an ``overlap`` (version 2), each tile's groups code the tile plus ``overlap`` px of its
    neighbours, and a pixel within ``overlap`` px of a tile edge is the weighted mean of the tiles
    that coded it (weights ramping linearly across the edge, ``_ramp``), in the 8-bit domain, before
    the mapping back to the source type: no tile edge is a coded image's border, so no seam. A region
    decodes the tiles whose coded windows it overlaps. Decoded tiles are kept until ``release_above``.
    """

    def __init__(self, header: dict[str, Any], parts_of: Callable[[int], list[bytes]],
                 masks_of: Callable[[int], tuple[np.ndarray | None, dict[int, np.ndarray]]], partial: bool = False):
        self.header = header
        self._parts_of, self._masks_of = parts_of, masks_of
        self._decoded: dict[int, np.ndarray | None] = {}
        self._windows = [coded_window(header, i) for i in range(len(header["tiles"]))]
        self.partial = partial

    @classmethod
    def of(cls, pkg: Package, partial: bool = False) -> "TileDecoder":
        """``partial``: a region needing less than ``PARTIAL_DECODE_FRACTION`` of a tile's coded window
        decodes only that part of it (``Codec.decode_window``: the same pixels), uncached; for region
        restores, where each tile is asked for once."""
        return cls(pkg.header, lambda i: [pkg.data[o:o + n] for o, n in pkg.spans[i]["parts"]],
                   lambda i: _tile_masks(pkg, i), partial)

    def _coded(self, ti: int, part: tuple[int, int, int, int] | None = None) -> np.ndarray | None:
        """Tile ``ti``'s coded window (or ``part`` of it: col, row, w, h within the window) in the 8-bit
        domain, (h, w, bands) uint8; None when it was not coded. Whole windows are kept until released."""
        if ti in self._decoded:
            out = self._decoded[ti]
            if out is None or part is None:
                return out
            col, row, w, h = part
            return out[row:row + h, col:col + w]
        from coldpress.codec.registry import decode_bitstream

        hd = self.header
        _, _, w, h = part or self._windows[ti]
        parts = self._parts_of(ti)
        out = None
        if any(len(p) for p in parts):
            out = np.empty((h, w, hd["bands"]), np.uint8)
            for group, blob in zip(hd["groups"], parts):
                pixels = decode_bitstream(blob, window=part)
                if pixels.shape[:2] != (h, w):
                    raise BitstreamError(f"a tile of this raster package decodes to {pixels.shape[:2]}, not {(h, w)}; "
                                         "it is corrupt: restore the archive from a replica")
                v8 = pixels[:, :, None] if pixels.ndim == 2 else pixels
                for j, b in enumerate(group):
                    out[:, :, b] = v8[:, :, j]
        if part is None:
            self._decoded[ti] = out
        return out

    def release_above(self, y: int) -> None:
        """Forget decoded tiles whose coded windows end at or above row ``y``."""
        for i in [i for i in self._decoded if self._windows[i][1] + self._windows[i][3] <= y]:
            del self._decoded[i]

    def region(self, window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        """(pixels (h, w, bands) in the source dtype, dataset valid mask or None when all valid) of a window."""
        hd = self.header
        col, row, w, h = window
        nb, dtype = hd["bands"], np.dtype(hd["dtype"])
        acc = np.zeros((h, w, nb), np.float32)
        wsum = np.zeros((h, w), np.float32)
        for i, (cx, cy, cw, ch) in enumerate(self._windows):
            x0, y0, x1, y1 = max(col, cx), max(row, cy), min(col + w, cx + cw), min(row + h, cy + ch)
            if x1 <= x0 or y1 <= y0:
                continue
            part = (x0 - cx, y0 - cy, x1 - x0, y1 - y0)
            whole = not self.partial or (x1 - x0) * (y1 - y0) >= PARTIAL_DECODE_FRACTION * cw * ch
            v8 = self._coded(i, None if whole else part)
            if v8 is None:  # a tile with no valid pixel: its neighbours alone fill the overlap
                continue
            if whole:
                v8 = v8[y0 - cy:y1 - cy, x0 - cx:x1 - cx]
            t = hd["tiles"][i]
            wt = (_ramp(cy, t["y"], t["y"] + t["h"], cy + ch)[y0 - cy:y1 - cy, None]
                  * _ramp(cx, t["x"], t["x"] + t["w"], cx + cw)[None, x0 - cx:x1 - cx])
            dst = (slice(y0 - row, y1 - row), slice(x0 - col, x1 - col))
            acc[dst] += v8 * wt[:, :, None]
            wsum[dst] += wt
        np.divide(acc, wsum[:, :, None], out=acc, where=wsum[:, :, None] > 0)
        out = np.empty((h, w, nb), dtype)
        for b in range(nb):
            lo, scale = hd["map"][b]
            out[:, :, b] = _from8(acc[:, :, b], lo, scale, dtype)
        del acc
        nodata = _from_json_number(hd.get("nodata"))
        fill = _from_json_number(hd.get("fill")) or 0.0
        mask = None
        for i, t in enumerate(hd["tiles"]):
            x0, y0 = max(col, t["x"]), max(row, t["y"])
            x1, y1 = min(col + w, t["x"] + t["w"]), min(row + h, t["y"] + t["h"])
            if x1 <= x0 or y1 <= y0:
                continue
            m, band_masks = self._masks_of(i)
            src = (slice(y0 - t["y"], y1 - t["y"]), slice(x0 - t["x"], x1 - t["x"]))
            part = out[y0 - row:y1 - row, x0 - col:x1 - col]  # a view: validity is applied in place
            if m is not None or band_masks or nodata is not None:
                valid_all = m[src] if m is not None else np.ones(part.shape[:2], bool)
                for b in range(nb):
                    _apply_validity(part, band_masks[b][src] if b in band_masks else valid_all, b, nodata, fill)
            if m is not None:
                if mask is None:
                    mask = np.ones((h, w), bool)
                mask[y0 - row:y1 - row, x0 - col:x1 - col] = m[src]
        return out, mask


def decode_tile(pkg: Package, ti: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(pixels (h, w, bands) in the source dtype, dataset valid mask or None when all valid) of tile ``ti``."""
    t = pkg.header["tiles"][ti]
    return TileDecoder.of(pkg).region((t["x"], t["y"], t["w"], t["h"]))


def tiles_in_window(pkg: Package, window: tuple[int, int, int, int]) -> list[int]:
    """The tiles a region lies on (the tiles it needs decoded are these and, with an overlap, their
    neighbours within ``overlap`` px: ``TileDecoder``)."""
    col, row, w, h = window
    return [i for i, t in enumerate(pkg.header["tiles"])
            if t["x"] < col + w and col < t["x"] + t["w"] and t["y"] < row + h and row < t["y"] + t["h"]]


def iter_tile_rows(pkg: Package) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """(row offset, pixels (h, W, bands), valid mask or None) of each row of tiles, top to bottom."""
    dec = TileDecoder.of(pkg)
    rows: dict[int, list[int]] = {}
    for i, t in enumerate(pkg.header["tiles"]):
        rows.setdefault(t["y"], []).append(i)
    for y in sorted(rows):
        dec.release_above(y)
        tiles = [pkg.header["tiles"][i] for i in sorted(rows[y], key=lambda i: pkg.header["tiles"][i]["x"])]
        parts = [dec.region((t["x"], t["y"], t["w"], t["h"])) for t in tiles]
        pixels = np.concatenate([p for p, _ in parts], axis=1)
        masks = None
        if any(m is not None for _, m in parts):
            masks = np.concatenate([m if m is not None else np.ones(p.shape[:2], bool) for p, m in parts], axis=1)
        yield y, pixels, masks


def decode_package(data: bytes, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The raster of a package, (H, W, bands) in the source dtype; with ``window`` (col, row,
    width, height) only that region, decoding only the tiles it overlaps."""
    pkg = unpack_package(data)
    return decode_region(pkg, window)[0]


def decode_region(pkg: Package, window: tuple[int, int, int, int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """(pixels (h, w, bands), valid mask or None) of a window (col, row, width, height), or of the whole
    raster; refused (BitstreamError) when its array would pass ``limits.max_decode_bytes()``."""
    check_decode(pkg.header, window)
    H, W, _ = pkg.shape
    return TileDecoder.of(pkg, partial=window is not None).region(window or (0, 0, W, H))


def recon_sha256(pkg: Package) -> str:
    """sha256 of the decoded raster's bytes, (H, W, bands) in C order, computed a row of tiles at a time
    (equal to ``records.pixels_sha256(decode_package(...))``)."""
    h = hashlib.sha256()
    for _, pixels, _ in iter_tile_rows(pkg):
        h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()
