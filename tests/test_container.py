"""The bitstream container: round trips, and every damaged or foreign input raises BitstreamError."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from coldpress.codec.container import FORMAT_VERSION, MAGIC, Bitstream, header_size, pack, unpack
from coldpress.codec.registry import codec_for_bitstream, decode_bitstream, get_codec
from coldpress.errors import BitstreamError, ModelMismatchError
from synthetic_images import natural_image

REFERENCE = ["jpeg", "webp", "avif", "avif-half", "avif-quarter"]
_rng = np.random.default_rng(1234)
REALISTIC = Bitstream(
    codec="avif-half",
    width=768,
    height=512,
    mode="RGBA",
    payload=_rng.bytes(700),
    params={"q": 37, "s": 2},
    alpha=_rng.bytes(90),
)
LEARNED_STYLE = Bitstream(
    codec="hyperprior",
    width=300,
    height=200,
    mode="L",
    payload=_rng.bytes(150),
    params={"lambda": 0.0018, "shape": [13, 19]},
    model_id="hyperprior-ms-ssim-q1",
    weights_hash=bytes.fromhex("0123456789abcdef"),
)


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


# -- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "b",
    [
        REALISTIC,
        LEARNED_STYLE,
        Bitstream(codec="jpeg", width=1, height=1, mode="RGB", payload=b""),
        Bitstream(codec="x", width=1 << 20, height=70000, mode="LA", payload=b"\x00" * 200, alpha=b"a"),
    ],
    ids=["realistic", "learned", "minimal", "huge-dims"],
)
def test_pack_unpack_round_trip(b, monkeypatch):
    # The largest dimensions the container holds; decoding them takes a raised pixel bound (codec.limits).
    monkeypatch.setenv("COLDPRESS_MAX_DECODE_PIXELS", str(1 << 40))
    data = pack(b)
    assert data.startswith(MAGIC + bytes([FORMAT_VERSION]))
    assert unpack(data) == b
    assert unpack(bytearray(data)) == b
    assert unpack(memoryview(data)) == b
    assert header_size(b) == len(data) - len(b.payload)


def test_packing_is_canonical():
    """Params are serialized with sorted keys: equal Bitstreams give equal bytes."""
    a = Bitstream(codec="c", width=2, height=2, mode="L", payload=b"p", params={"b": 1, "a": 2})
    b = Bitstream(codec="c", width=2, height=2, mode="L", payload=b"p", params={"a": 2, "b": 1})
    assert pack(a) == pack(b)


@pytest.mark.parametrize(
    "bad",
    [
        Bitstream(codec="c", width=2, height=2, mode="CMYK", payload=b""),
        Bitstream(codec="c", width=0, height=2, mode="L", payload=b""),
        Bitstream(codec="c", width=2, height=(1 << 20) + 1, mode="L", payload=b""),
        Bitstream(codec="c" * 256, width=2, height=2, mode="L", payload=b""),
    ],
    ids=["mode", "zero-width", "too-tall", "long-name"],
)
def test_pack_refuses_invalid_fields(bad):
    with pytest.raises(ValueError):
        pack(bad)


# -- damaged containers --------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [REALISTIC, LEARNED_STYLE], ids=["realistic", "learned"])
def test_every_truncation_raises(b):
    data = pack(b)
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            unpack(data[:n])


@pytest.mark.parametrize("b", [REALISTIC, LEARNED_STYLE], ids=["realistic", "learned"])
def test_every_single_bit_flip_raises(b):
    data = pack(b)
    for i in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            with pytest.raises(BitstreamError):
                unpack(bytes(damaged))


def test_random_multi_bit_damage_raises():
    data = pack(REALISTIC)
    rng = np.random.default_rng(7)
    for _ in range(2000):
        damaged = bytearray(data)
        for i in rng.choice(len(data), size=int(rng.integers(2, 12)), replace=False):
            damaged[i] ^= int(rng.integers(1, 256))
        with pytest.raises(BitstreamError):
            unpack(bytes(damaged))


def test_extra_bytes_raise():
    data = pack(REALISTIC)
    with pytest.raises(BitstreamError, match="corrupted"):
        unpack(data + b"\x00")
    # Even with a checksum that covers them, trailing bytes are refused.
    with pytest.raises(BitstreamError, match="unexpected bytes"):
        unpack(_with_crc(data[:-4] + b"junk"))


def test_crc_mismatch_is_reported_as_corruption():
    data = bytearray(pack(REALISTIC))
    data[-1] ^= 0xFF
    with pytest.raises(BitstreamError, match="CRC32.*restore it from the archive or a replica"):
        unpack(bytes(data))


# -- foreign and future bytes -----------------------------------------------------------------------------


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(natural_image(8, 8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "truncated"),
        (b"CP", "truncated"),
        (MAGIC, "truncated"),
        (MAGIC + bytes([FORMAT_VERSION, 0]), "truncated"),
        (_png(), "not a coldpress bitstream.*pass the 'bitstream' column"),
        (b"\x89PNG\r\n\x1a\n", "not a coldpress bitstream"),
        (np.random.default_rng(3).bytes(1000), "not a coldpress bitstream"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "not a coldpress bitstream"),
    ],
    ids=["empty", "partial-magic", "magic-only", "magic-version-flags", "png", "png-signature", "random", "webp"],
)
def test_foreign_bytes_are_refused(data, message):
    with pytest.raises(BitstreamError, match=message):
        unpack(data)
    with pytest.raises(BitstreamError, match=message):
        decode_bitstream(data)


def test_non_bytes_are_refused():
    with pytest.raises(BitstreamError, match="expected bytes"):
        unpack("CPRS")  # type: ignore[arg-type]


def test_newer_format_version_asks_for_an_upgrade():
    data = bytearray(pack(REALISTIC))
    data[4] = FORMAT_VERSION + 1
    newer = _with_crc(bytes(data[:-4]))
    with pytest.raises(BitstreamError, match=f"version {FORMAT_VERSION + 1}.*upgrade coldpress"):
        unpack(newer)
    with pytest.raises(BitstreamError, match="upgrade coldpress"):
        decode_bitstream(newer)


def test_version_zero_is_corruption():
    data = bytearray(pack(REALISTIC))
    data[4] = 0
    with pytest.raises(BitstreamError, match="corrupted"):
        unpack(_with_crc(bytes(data[:-4])))


def test_checksummed_but_invalid_fields_are_refused():
    """A faulty writer's container (valid CRC, invalid fields) is refused, not misread."""
    body = bytearray(pack(REALISTIC)[:-4])
    body[5] |= 0x80  # unknown flag
    with pytest.raises(BitstreamError, match="unknown flags"):
        unpack(_with_crc(bytes(body)))
    b = Bitstream(codec="c", width=2, height=2, mode="L", payload=b"")
    body = bytearray(pack(b)[:-4])
    body[8] = 9  # mode code: magic(4) version flags width height -> mode at offset 8
    with pytest.raises(BitstreamError, match="unknown mode code 9"):
        unpack(_with_crc(bytes(body)))


# -- codec identity and dispatch -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    image = natural_image(48, 64, "RGBA", seed=5)  # non-opaque alpha: the alpha section is exercised too
    return {name: get_codec(name).encode(image, 4.0).bitstream for name in REFERENCE}


def test_decode_with_another_codec_names_the_codec_needed(encoded):
    with pytest.raises(ModelMismatchError, match=r"made by codec 'jpeg', not 'webp'.*get_codec\('jpeg'\)"):
        get_codec("webp").decode(encoded["jpeg"])
    with pytest.raises(ModelMismatchError, match="'avif-half', not 'avif'"):
        get_codec("avif").decode(encoded["avif-half"])


def test_decode_with_another_model_names_the_model_needed(encoded):
    b = unpack(encoded["avif"])
    other = pack(Bitstream(**{**b.__dict__, "model_id": "hyperprior-v3", "weights_hash": bytes(range(8))}))
    with pytest.raises(ModelMismatchError, match="needs model 'hyperprior-v3' \\(weights 0001020304050607\\)"):
        get_codec("avif").decode(other)
    with pytest.raises(ModelMismatchError, match="hyperprior-v3"):
        decode_bitstream(other)


def test_unknown_codec_names_what_to_install():
    data = pack(Bitstream(codec="no-such-codec", width=4, height=4, mode="RGB", payload=b"x"))
    with pytest.raises(ModelMismatchError, match="'no-such-codec', which this installation does not have"):
        decode_bitstream(data)


@pytest.mark.parametrize("name", REFERENCE)
def test_decode_bitstream_dispatches_by_codec_name(name, encoded):
    data = encoded[name]
    assert codec_for_bitstream(data) is get_codec(name)
    np.testing.assert_array_equal(decode_bitstream(data), get_codec(name).decode(data))


# -- end to end: real codec bitstreams, damaged -------------------------------------------------------------


@pytest.mark.parametrize("name", REFERENCE)
def test_damaged_codec_bitstreams_always_raise(name, encoded):
    data = encoded[name]
    assert unpack(data).alpha and len(data) > 600
    decode_bitstream(data)  # the undamaged one decodes
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            decode_bitstream(data[:n])
    for i in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            with pytest.raises(BitstreamError):
                decode_bitstream(bytes(damaged))
