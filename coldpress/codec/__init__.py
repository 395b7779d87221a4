"""Codecs: the contract, the bitstream container, the registry, reference and learned codecs.

The codec layer knows nothing of engines or storage: it turns pixel arrays into bytes and back.
"""

from coldpress.codec.base import Codec, EncodeResult
from coldpress.codec.container import Bitstream, pack, unpack
from coldpress.codec.registry import codec_names, decode_bitstream, get_codec, register

__all__ = [
    "Bitstream",
    "Codec",
    "EncodeResult",
    "codec_names",
    "decode_bitstream",
    "get_codec",
    "pack",
    "register",
    "unpack",
]
