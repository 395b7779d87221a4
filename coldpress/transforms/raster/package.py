"""The raster package (``CPRT``, docs/FORMAT.md): header, tile index, masks and coded band groups,
and decoding it tile by tile."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from coldpress.codec.container import read_varint, varint
from coldpress.errors import BitstreamError
from coldpress.transforms.raster.mapping import _apply_validity, _from8
from coldpress.transforms.raster.masks import _unpack_mask
from coldpress.transforms.raster.metadata import _from_json_number

RASTER_MAGIC = b"CPRT"
RASTER_VERSION = 1
#: ``mode`` column of raster rows.
RASTER_MODE = "RASTER"


def pack_package(header: dict[str, Any], blobs: list[bytes]) -> bytes:
    head = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    body = bytes([RASTER_VERSION]) + varint(len(head)) + head + b"".join(blobs)
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
    n, pos = read_varint(data, 5, "this raster package")
    try:
        header = json.loads(data[pos:pos + n])
    except ValueError as exc:
        raise BitstreamError(f"the header of this raster package does not parse ({exc}); restore it from a replica") from None
    pos += n
    spans = []
    for t in header["tiles"]:
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
        spans.append(entry)
    if pos != len(data) - 4:
        raise BitstreamError("the tile index of this raster package does not match its length; restore it from a replica")
    return Package(header=header, data=data, spans=spans)


def _tile_masks(pkg: Package, ti: int) -> tuple[np.ndarray | None, dict[int, np.ndarray]]:
    t = pkg.header["tiles"][ti]
    h, w = t["h"], t["w"]
    off, length = pkg.spans[ti]["mask"]
    mask = _unpack_mask(pkg.data[off:off + length], h, w) if length else None
    base = mask if mask is not None else np.ones((h, w), bool)
    band_masks = {b: base ^ _unpack_mask(pkg.data[o:o + n], h, w) for b, (o, n) in pkg.spans[ti]["band_masks"].items()}
    return mask, band_masks


def decode_tile(pkg: Package, ti: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(pixels (h, w, bands) in the source dtype, dataset valid mask or None when all valid) of tile ``ti``."""
    from coldpress.codec.registry import decode_bitstream

    hd = pkg.header
    t = hd["tiles"][ti]
    h, w, nb = t["h"], t["w"], hd["bands"]
    dtype = pkg.dtype
    nodata = _from_json_number(hd.get("nodata"))
    fill = _from_json_number(hd.get("fill")) or 0.0
    mask, band_masks = _tile_masks(pkg, ti)
    out = np.empty((h, w, nb), dtype)
    for group, (off, length) in zip(hd["groups"], pkg.spans[ti]["parts"]):
        if length == 0:
            v8 = np.zeros((h, w, len(group)))
        else:
            pixels = decode_bitstream(pkg.data[off:off + length])
            if pixels.shape[:2] != (h, w):
                raise BitstreamError(f"a tile of this raster package decodes to {pixels.shape[:2]}, not {(h, w)}; it is corrupt")
            v8 = pixels[:, :, None] if pixels.ndim == 2 else pixels
        for j, b in enumerate(group):
            lo, scale = hd["map"][b]
            out[:, :, b] = _from8(v8[:, :, j], lo, scale, dtype)
    valid_all = mask if mask is not None else np.ones((h, w), bool)
    if mask is not None or band_masks:
        for b in range(nb):
            _apply_validity(out, band_masks.get(b, valid_all), b, nodata, fill)
    elif nodata is not None:
        for b in range(nb):
            _apply_validity(out, valid_all, b, nodata, fill)
    return out, mask


def tiles_in_window(pkg: Package, window: tuple[int, int, int, int]) -> list[int]:
    col, row, w, h = window
    return [i for i, t in enumerate(pkg.header["tiles"])
            if t["x"] < col + w and col < t["x"] + t["w"] and t["y"] < row + h and row < t["y"] + t["h"]]


def iter_tile_rows(pkg: Package) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """(row offset, pixels (h, W, bands), valid mask or None) of each row of tiles, top to bottom."""
    rows: dict[int, list[int]] = {}
    for i, t in enumerate(pkg.header["tiles"]):
        rows.setdefault(t["y"], []).append(i)
    for y in sorted(rows):
        parts = [decode_tile(pkg, i) for i in sorted(rows[y], key=lambda i: pkg.header["tiles"][i]["x"])]
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
    H, W, nb = pkg.shape
    col, row, w, h = window or (0, 0, W, H)
    out = np.empty((h, w, nb), pkg.dtype)
    mask = None
    for i in tiles_in_window(pkg, (col, row, w, h)):
        t = pkg.header["tiles"][i]
        pixels, m = decode_tile(pkg, i)
        x0, y0 = max(col, t["x"]), max(row, t["y"])
        x1, y1 = min(col + w, t["x"] + t["w"]), min(row + h, t["y"] + t["h"])
        src = (slice(y0 - t["y"], y1 - t["y"]), slice(x0 - t["x"], x1 - t["x"]))
        dst = (slice(y0 - row, y1 - row), slice(x0 - col, x1 - col))
        out[dst] = pixels[src]
        if m is not None:
            if mask is None:
                mask = np.ones((h, w), bool)
            mask[dst] = m[src]
    return out, mask


def recon_sha256(pkg: Package) -> str:
    """sha256 of the decoded raster's bytes, (H, W, bands) in C order, computed a row of tiles at a time
    (equal to ``records.pixels_sha256(decode_package(...))``)."""
    h = hashlib.sha256()
    for _, pixels, _ in iter_tile_rows(pkg):
        h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()
