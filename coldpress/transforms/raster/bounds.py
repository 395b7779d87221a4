"""Bounds on a raster package read from an archive (``codec.limits``): ``package.unpack_package``
reads its header with ``read_header`` (the header's length checked, then parsed with a bounded JSON
depth, then its declarations checked: size, bands, sample type, tiles) before it walks the tile
index, and ``check_decode`` bounds what a decode allocates. A package that fails is refused with a
BitstreamError naming what is wrong."""

from __future__ import annotations

from typing import Any

from coldpress.codec.container import read_varint
from coldpress.codec.limits import check_bytes, check_pixels, loads_bounded
from coldpress.errors import BitstreamError

#: Most bands, and most tiles, a raster package may declare (coldpress writes 1,024-pixel tiles: a
#: raster at the decode pixel limit has about 170 of them).
MAX_RASTER_BANDS = 4096
MAX_RASTER_TILES = 1 << 16
#: Longest header read (about 60 bytes per tile are written): checked before it is parsed.
MAX_HEADER_BYTES = 96 * MAX_RASTER_TILES
_DTYPES = {"uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "uint32": 4, "int32": 4, "uint64": 8, "int64": 8,
           "float32": 4, "float64": 8}


def _bad(detail: str) -> BitstreamError:
    return BitstreamError(f"the header of this raster package is invalid ({detail}): the archive row is corrupt "
                          "or hostile; restore it from a replica or re-encode the source")


def _count(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def read_header(data: bytes) -> tuple[dict[str, Any], int]:
    """(checked header, offset of the tile data) of raster package ``data``, whose magic, length and
    CRC32 ``package.unpack_package`` has checked."""
    n, pos = read_varint(data, 5, "this raster package")
    if pos + n > len(data) - 4:
        raise _bad(f"its header length {n:,} runs past the package's {len(data):,} bytes")
    if n > MAX_HEADER_BYTES:
        raise _bad(f"a header of {n:,} bytes, more than the {MAX_HEADER_BYTES:,} of {MAX_RASTER_TILES:,} tiles")
    try:
        header = loads_bounded(data[pos:pos + n], "the header")
    except ValueError as exc:
        raise _bad(f"it does not parse: {str(exc)[:120]}") from None
    check_header(header, len(data))
    return header, pos + n


def check_header(header: Any, size: int) -> None:
    """Refuse a header whose declarations are inconsistent or beyond the decode bounds."""
    if not isinstance(header, dict):
        raise _bad("not a JSON object")
    W, H, nb = header.get("width"), header.get("height"), header.get("bands")
    if not (_count(W, 1) and _count(H, 1) and _count(nb, 1)):
        raise _bad("width, height and bands must be positive whole numbers")
    check_pixels(W, H, "this raster package")
    if nb > MAX_RASTER_BANDS:
        raise _bad(f"{nb:,} bands, more than {MAX_RASTER_BANDS:,}")
    if header.get("dtype") not in _DTYPES:
        raise _bad(f"sample type {str(header.get('dtype'))[:40]!r} is not one of {', '.join(sorted(_DTYPES))}")
    groups, maps, tiles = header.get("groups"), header.get("map"), header.get("tiles")
    if not (isinstance(groups, list) and groups and all(
            isinstance(g, list) and g and all(_count(b) and b < nb for b in g) for g in groups)):
        raise _bad("band groups must list bands of the raster")
    if not (isinstance(maps, list) and len(maps) == nb and all(
            isinstance(m, list) and len(m) == 2 and all(isinstance(v, (int, float)) for v in m) for m in maps)):
        raise _bad("the sample map must hold two numbers per band")
    if not (_count(header.get("overlap", 0)) and header.get("overlap", 0) <= max(W, H)):
        raise _bad("the tile overlap must be a whole number of pixels within the raster")
    if not isinstance(tiles, list) or not tiles or len(tiles) > min(MAX_RASTER_TILES, size):
        raise _bad(f"{f'{len(tiles):,}' if isinstance(tiles, list) else 'no'} tiles; 1 to {MAX_RASTER_TILES:,} are allowed")
    area = 0
    for t in tiles:
        if not (isinstance(t, dict) and all(_count(t.get(k)) for k in ("x", "y", "mask"))
                and _count(t.get("w"), 1) and _count(t.get("h"), 1)
                and t["x"] + t["w"] <= W and t["y"] + t["h"] <= H):
            raise _bad("a tile lies outside the raster or lacks its position, size or mask length")
        parts, masks = t.get("parts"), t.get("band_masks", {})
        if not (isinstance(parts, list) and len(parts) == len(groups) and all(_count(n) for n in parts)):
            raise _bad("a tile does not hold one part length per band group")
        if not (isinstance(masks, dict) and all(
                isinstance(k, str) and k.isdigit() and int(k) < nb and _count(v) for k, v in masks.items())):
            raise _bad("a tile's band masks do not name bands of the raster")
        area += t["w"] * t["h"]
    if area > 4 * W * H:  # tiles cover the raster once: bounds the work of a decode
        raise _bad(f"its {len(tiles):,} tiles cover {area:,} pixels of a {W}x{H} raster")


def check_decode(header: dict[str, Any], window: tuple[int, int, int, int] | None = None) -> None:
    """Refuse decoding ``window`` (col, row, w, h; None: the whole raster) when its array would pass
    ``max_decode_bytes()``."""
    w, h = (window[2], window[3]) if window else (header["width"], header["height"])
    nb = header["bands"]
    check_bytes(int(w) * int(h) * nb * _DTYPES[header["dtype"]],
                f"this {w}x{h}x{nb} {header['dtype']} raster" + (" region" if window else ""))
