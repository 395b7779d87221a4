"""Bounds on what coldpress accepts from an archive or bitstream it did not necessarily write.

A hostile (or badly damaged, yet checksum-consistent) archive can declare anything: a 1,048,576 x
1,048,576 image in a 100-byte bitstream, a raster of a million tiles, JSON nested a million levels
deep. Every such declaration is checked against these bounds before anything is allocated or
decoded, and refused with a ``BitstreamError`` (one row refused, the rest of the job goes on):

- ``max_decode_pixels()``: pixels (width x height) one bitstream or raster may declare; by default
  the encoder's own input limit (``transforms.read.DEFAULT_MAX_PIXELS``), so every archive coldpress
  writes with default settings decodes. ``COLDPRESS_MAX_DECODE_PIXELS`` raises it for trusted
  archives of larger images.
- ``max_decode_bytes()``: bytes of the array one raster decode allocates (height x width x bands x
  sample size; a region decode counts only its window): 4 GiB, ``COLDPRESS_MAX_DECODE_BYTES``.
- ``MAX_JSON_DEPTH``: nesting of any JSON read from an archive (bitstream params, raster headers,
  row metadata, the manifest); ``loads_bounded`` refuses deeper documents without recursing.
"""

from __future__ import annotations

import json
import os
from typing import Any

from coldpress.errors import BitstreamError

#: The encoder's default input limit (``transforms.read.DEFAULT_MAX_PIXELS``, Pillow's bomb limit).
DEFAULT_MAX_DECODE_PIXELS = 178_956_970
DEFAULT_MAX_DECODE_BYTES = 4 << 30
#: Deepest JSON nesting accepted from an archive (coldpress writes at most 4 or 5 levels).
MAX_JSON_DEPTH = 32


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number; set it to a count such as {default}") from None
    if value < 1:
        raise ValueError(f"{name}={raw!r} must be positive; set it to a count such as {default}")
    return value


def max_decode_pixels() -> int:
    return _env_int("COLDPRESS_MAX_DECODE_PIXELS", DEFAULT_MAX_DECODE_PIXELS)


def max_decode_bytes() -> int:
    return _env_int("COLDPRESS_MAX_DECODE_BYTES", DEFAULT_MAX_DECODE_BYTES)


def check_pixels(width: int, height: int, what: str) -> None:
    """Refuse ``what`` declaring ``width`` x ``height`` pixels beyond ``max_decode_pixels()``."""
    limit = max_decode_pixels()
    if width * height > limit:
        raise BitstreamError(
            f"{what} declares {width}x{height} = {width * height:,} pixels, more than the {limit:,} this "
            "coldpress decodes (a hostile or corrupt archive, or one encoded with a raised pixel limit); "
            "if the archive is trusted, set COLDPRESS_MAX_DECODE_PIXELS to at least that many pixels"
        )


def check_bytes(nbytes: int, what: str) -> None:
    """Refuse allocating ``nbytes`` for ``what`` beyond ``max_decode_bytes()``."""
    limit = max_decode_bytes()
    if nbytes > limit:
        raise BitstreamError(
            f"decoding {what} needs {nbytes:,} bytes of memory, more than the {limit:,} allowed; restore a "
            "region of it (--window/--bbox), or, if the archive is trusted, set COLDPRESS_MAX_DECODE_BYTES"
        )


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth = max(depth, level)
        if depth > MAX_JSON_DEPTH:
            return depth
        stack.extend((c, level + 1) for c in children)
    return depth


def loads_bounded(raw: str | bytes, what: str) -> Any:
    """``json.loads`` of JSON read from an archive; ValueError when it does not parse or nests
    deeper than MAX_JSON_DEPTH (Python's parser would recurse, or raise RecursionError)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ValueError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return value
