"""The coldpress bitstream container: versioned, self-describing, checksummed.

Layout (all multi-byte integers are unsigned LEB128 varints unless noted; see docs/FORMAT.md):

    magic        4 bytes  b"CPRS"
    version      1 byte   FORMAT_VERSION
    flags        1 byte   bit 0: an alpha section follows the payload
    width        varint
    height       varint
    mode         1 byte   0 = L, 1 = LA, 2 = RGB, 3 = RGBA (the mode restored on decode)
    codec        1 byte length + ASCII
    model id     1 byte length + ASCII (empty for reference codecs)
    weights hash 1 byte length + bytes (first 8 bytes of the weights' sha256; empty for reference codecs)
    params       varint length + compact JSON object (rate parameters of the codec)
    payload      varint length + bytes
    alpha        varint length + PNG bytes of the alpha plane (only when flag bit 0 is set)
    crc32        4 bytes big-endian, zlib.crc32 of every byte before it

A container that is truncated, corrupted, foreign or of a newer version raises BitstreamError
with a message that says which and what to do.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from coldpress.codec.limits import check_pixels, loads_bounded
from coldpress.errors import BitstreamError

MAGIC = b"CPRS"
FORMAT_VERSION = 1
MODES = ("L", "LA", "RGB", "RGBA")
_FLAG_ALPHA = 0x01
_KNOWN_FLAGS = _FLAG_ALPHA
_MAX_DIM = 1 << 20


@dataclass(frozen=True)
class Bitstream:
    """The decoded fields of one container."""

    codec: str
    width: int
    height: int
    mode: str
    payload: bytes
    params: dict[str, Any] = field(default_factory=dict)
    model_id: str = ""
    weights_hash: bytes = b""
    alpha: bytes = b""

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """(value, next position) of a varint at ``pos``; BitstreamError naming ``what`` when it is cut or too long."""
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise BitstreamError(f"{what} is truncated or corrupted (bad length field); restore it from a replica")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def varint(n: int) -> bytes:
    """LEB128 encoding of a non-negative integer (the container's, the learned payload's and the raster
    package's length fields)."""
    if n < 0:
        raise ValueError(f"varint must be non-negative, got {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _short(field_name: str, value: bytes) -> bytes:
    if len(value) > 255:
        raise ValueError(f"{field_name} is {len(value)} bytes; the container allows at most 255")
    return bytes([len(value)]) + value


def pack(b: Bitstream) -> bytes:
    """Serialize a Bitstream into container bytes."""
    if b.mode not in MODES:
        raise ValueError(f"mode {b.mode!r} is not one of {MODES}")
    if not (0 < b.width <= _MAX_DIM and 0 < b.height <= _MAX_DIM):
        raise ValueError(f"image size {b.width}x{b.height} is outside 1..{_MAX_DIM}")
    params = json.dumps(b.params, separators=(",", ":"), sort_keys=True).encode()
    flags = _FLAG_ALPHA if b.alpha else 0
    parts = [
        MAGIC,
        bytes([FORMAT_VERSION, flags]),
        varint(b.width),
        varint(b.height),
        bytes([MODES.index(b.mode)]),
        _short("codec name", b.codec.encode("ascii")),
        _short("model id", b.model_id.encode("ascii")),
        _short("weights hash", b.weights_hash),
        varint(len(params)),
        params,
        varint(len(b.payload)),
        b.payload,
    ]
    if b.alpha:
        parts += [varint(len(b.alpha)), b.alpha]
    body = b"".join(parts)
    return body + struct.pack(">I", zlib.crc32(body))


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def _need(self, n: int, what: str) -> None:
        if self.pos + n > len(self.data) - 4:
            raise BitstreamError(
                f"bitstream is truncated: reading the {what} needs {self.pos + n + 4} bytes but only "
                f"{len(self.data)} are present; the copy is incomplete, restore it from the archive "
                "or a replica, or re-encode the source image"
            )

    def byte(self, what: str) -> int:
        self._need(1, what)
        v = self.data[self.pos]
        self.pos += 1
        return v

    def varint(self, what: str) -> int:
        shift = 0
        value = 0
        for _ in range(10):
            byte = self.byte(what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise BitstreamError(f"bitstream is corrupted: the {what} field is not a valid varint")

    def take(self, n: int, what: str) -> bytes:
        self._need(n, what)
        v = self.data[self.pos : self.pos + n]
        self.pos += n
        return bytes(v)


def _corrupted(detail: str) -> BitstreamError:
    return BitstreamError(
        f"bitstream is corrupted: {detail}; restore it from the archive or a replica, "
        "or re-encode the source image"
    )


def unpack(data: bytes) -> Bitstream:
    """Parse container bytes; raise BitstreamError on anything that is not a valid container."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC) and MAGIC.startswith(data):
        raise BitstreamError(
            f"bitstream is truncated: {len(data)} bytes is too short to be a coldpress bitstream"
        )
    if data[:4] != MAGIC:
        raise BitstreamError(
            f"not a coldpress bitstream: it starts with {data[:4]!r} instead of {MAGIC!r}; "
            "pass the 'bitstream' column of a coldpress archive"
        )
    if len(data) < 4 + 2 + 4:
        raise BitstreamError(
            f"bitstream is truncated: {len(data)} bytes is too short to hold a coldpress header"
        )
    version = data[4]
    if version > FORMAT_VERSION:
        raise BitstreamError(
            f"bitstream uses container format version {version}, newer than the {FORMAT_VERSION} "
            "this coldpress reads; upgrade coldpress to decode it"
        )
    if version == 0:
        raise _corrupted("format version 0 does not exist")
    r = _Reader(data)
    r.pos = 5
    flags = r.byte("flags")
    width = r.varint("width")
    height = r.varint("height")
    mode_code = r.byte("mode")
    codec = r.take(r.byte("codec name length"), "codec name")
    model_id = r.take(r.byte("model id length"), "model id")
    weights_hash = r.take(r.byte("weights hash length"), "weights hash")
    params_raw = r.take(r.varint("params length"), "params")
    payload = r.take(r.varint("payload length"), "payload")
    alpha = b""
    if flags & _FLAG_ALPHA:
        alpha = r.take(r.varint("alpha length"), "alpha plane")
    stored_crc = struct.unpack(">I", data[-4:])[0]
    crc = zlib.crc32(data[:-4])
    if r.pos != len(data) - 4:
        if crc != stored_crc:
            raise _corrupted(
                f"the fields end at byte {r.pos} but the bitstream has {len(data) - 4} bytes before "
                "its checksum, and the checksum does not match"
            )
        raise _corrupted(f"{len(data) - 4 - r.pos} unexpected bytes after the last field")
    if crc != stored_crc:
        raise _corrupted(f"CRC32 is {crc:08x}, the bitstream says {stored_crc:08x}")
    # The checksum matched: remaining checks catch writers that produced invalid fields.
    if flags & ~_KNOWN_FLAGS:
        raise _corrupted(f"unknown flags {flags:#04x}")
    if mode_code >= len(MODES):
        raise _corrupted(f"unknown mode code {mode_code}")
    if not (0 < width <= _MAX_DIM and 0 < height <= _MAX_DIM):
        raise _corrupted(f"image size {width}x{height} is outside 1..{_MAX_DIM}")
    check_pixels(width, height, "this bitstream")  # before any decoder allocates for it
    try:
        params = loads_bounded(params_raw.decode(), "the params field") if params_raw else {}
        codec_name = codec.decode("ascii")
        model_name = model_id.decode("ascii")
    except (UnicodeDecodeError, ValueError) as exc:
        raise _corrupted(f"header fields do not decode ({exc})") from None
    if not isinstance(params, dict):
        raise _corrupted("params is not a JSON object")
    return Bitstream(
        codec=codec_name,
        width=width,
        height=height,
        mode=MODES[mode_code],
        payload=payload,
        params=params,
        model_id=model_name,
        weights_hash=weights_hash,
        alpha=alpha,
    )


def header_size(b: Bitstream) -> int:
    """Bytes the container adds around the payload of ``b`` (header, alpha section, checksum)."""
    return len(pack(b)) - len(b.payload)
