"""Archive row in, pixels out: ``decode_record`` (the bitstream checked against ``bitstream_sha256``
first), the decoder choice it takes (``decoder_fields``, ``decoder_provenance``) and ``pixels_sha256``, the
``recon_sha256`` a decode is checked against."""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np

from coldpress.codec.limits import loads_bounded
from coldpress.codec.precision_check import checked_against_reference
from coldpress.codec.registry import decode_bitstream
from coldpress.errors import BitstreamError, ColdpressError
from coldpress.transforms import raster

def pixels_sha256(pixels: np.ndarray) -> str:
    """sha256 (hex) of an image array's bytes in C order: the ``recon_sha256`` of a row."""
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def checked_bitstream(row: Mapping[str, Any]) -> bytes:
    """The bitstream of an archive row, after checking it against ``bitstream_sha256``."""
    rid = row.get("id", "?")
    bitstream = row.get("bitstream")
    if bitstream is None:
        raise BitstreamError(
            f"archive row {rid!r} has no bitstream; the archive is corrupt: restore it from a replica "
            f"or re-encode the source {row.get('source_uri', '')}"
        )
    bitstream = bytes(bitstream)
    expected = str(row.get("bitstream_sha256") or "")
    actual = hashlib.sha256(bitstream).hexdigest()
    if actual != expected.lower():
        raise BitstreamError(
            f"archive row {rid!r} is corrupt: its bitstream's sha256 is {actual} but the row records "
            f"{expected or 'none'}; restore the archive file from a replica or re-encode the source "
            f"{row.get('source_uri', '')}"
        )
    return bitstream  # a raster package's declarations are checked by raster.unpack_package


def is_raster_row(row: Mapping[str, Any]) -> bool:
    """Whether a row holds a geospatial raster (mode RASTER, a raster package bitstream)."""
    return row.get("mode") == raster.RASTER_MODE


def decode_record(row: Mapping[str, Any], decoder: Any = None) -> np.ndarray:
    """The image of an archive row, after checking its bitstream against ``bitstream_sha256``.

    Rasters decode to (H, W, bands) arrays of the source's data type, nodata and masks applied.
    ``decoder``: a ``coldpress.codec.diffusion.DecoderChoice`` (or its fields as a mapping); None is the
    coarse decoder, the one ``verify`` checks."""
    rid = row.get("id", "?")
    bitstream = checked_bitstream(row)
    if raster.is_package(bitstream):
        _refuse_diffusion_raster(row, decoder)
        pixels = raster.decode_package(bitstream)  # declarations and the decode's memory bounded there
    else:
        pixels = decode_bitstream(bitstream, decoder=decoder)
    width, height = row.get("width"), row.get("height")
    if width is not None and height is not None and pixels.shape[:2] != (int(height), int(width)):
        raise BitstreamError(
            f"archive row {rid!r} says {width}x{height} but its bitstream decodes to "
            f"{pixels.shape[1]}x{pixels.shape[0]}; the archive is corrupt: restore it from a replica"
        )
    return pixels


def within_reference_decode(row: Mapping[str, Any]) -> bool:
    """Whether this machine's decode of ``row`` holds payloads of a float32 model, is within the
    reproducibility contract's one level of the float64 reference decode (``coldpress.codec.precision_check``)
    and ran on another kind of device than the one the row records it was written on: what such a row
    decodes to here. On the writer's own kind of device the pixels must be the recorded ones exactly
    (rows written before the kind was recorded get the one level wherever they are decoded)."""
    with checked_against_reference() as check:
        decode_record(row)
    try:
        written_on = loads_bounded(row.get("metadata") or "{}", "the row's metadata").get("decode_device_kind")
    except (ValueError, AttributeError):
        written_on = None  # a damaged metadata column: the decode check alone decides
    return check.within_contract and written_on not in check.device_kinds


def decoder_fields(decoder: Any) -> dict[str, Any] | None:
    """A decoder choice as plain fields for workers (checked where it is made: the driver), or None for
    the coarse decoder."""
    if decoder is None:
        return None
    from coldpress.codec.diffusion import DecoderChoice

    choice = DecoderChoice.of(decoder)
    return None if choice.is_coarse else choice.to_dict()


def decoder_provenance(decoder: Any) -> dict[str, Any] | None:
    """What a restored file records about ``decoder`` (None for the coarse decoder: nothing recorded)."""
    if decoder is None:
        return None
    from coldpress.codec.diffusion import DecoderChoice, provenance

    choice = DecoderChoice.of(decoder)
    return None if choice.is_coarse else provenance(choice)


def _refuse_diffusion_raster(row: Mapping[str, Any], decoder: Any) -> None:
    if decoder is None:
        return
    from coldpress.codec.diffusion import DecoderChoice

    if not DecoderChoice.of(decoder).is_coarse:
        raise ColdpressError(
            f"{row.get('id')!r} is a georeferenced raster: the diffusion decoder restores photos (it invents "
            "plausible detail, which rasters measured in physical units must not get); restore rasters "
            "without --decoder diffusion"
        )
