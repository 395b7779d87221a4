"""Golden bitstreams: every shipped learned model's committed bitstreams decode to the committed pixels.

The files in tests/golden were made by tools/make_golden.py with the release that shipped each model;
``python tools/make_golden.py --record-device`` records a new kind of CPU's pixels for the float32 models.
An upgrade of compressai (its rANS coder and CDF tables are part of the format), torch, or a change of
the decoder, its tiling or the fixed-point entropy path that alters a shipped model's output fails here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from coldpress.codec import container
from coldpress.codec.models import registry
from coldpress.codec.precision_check import CONTRACT_LEVELS, checked_against_reference, device_kind
from coldpress.codec.registry import decode_bitstream
from coldpress.transforms.records import pixels_sha256

GOLDEN = Path(__file__).parent / "golden"
INDEX = json.loads((GOLDEN / "golden.json").read_text())["files"]
DECODER_INDEX = json.loads((GOLDEN / "golden.json").read_text()).get("decoders", {})


def test_every_shipped_model_has_golden_bitstreams():
    shipped = set(registry()["models"])
    pinned = {entry["model_id"] for entry in INDEX.values()}
    assert shipped <= pinned, (
        f"shipped models without golden bitstreams: {sorted(shipped - pinned)}; run python tools/make_golden.py")
    assert any(entry["width"] > 1024 for entry in INDEX.values()), "no golden image exercises the decode tiling"


@pytest.mark.parametrize("name", sorted(INDEX))
def test_golden_bitstream_decodes_to_its_recorded_pixels(name):
    """Float64 models: the recorded pixels, exactly. Float32 models (v3 on): the float64 reference decode
    exactly, on any machine; the float32 decode within one level of it; and exactly the pixels recorded
    for this kind of device where one was recorded (another kind of CPU rounds a few samples the other
    way: coldpress.codec.precision_check)."""
    entry = INDEX[name]
    data = (GOLDEN / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["bitstream_sha256"], f"{name} itself changed"
    assert container.unpack(data).model_id == entry["model_id"]
    with checked_against_reference() as check:
        pixels = decode_bitstream(data, device="cpu")
    assert list(pixels.shape) == entry["shape"]
    changed = (f"{name} ({entry['model_id']}) no longer decodes to the pixels recorded when it was made with "
               f"{entry['made_with']}: a dependency or the decoder changed what archived bitstreams decode to")
    if "reference_pixels_sha256" not in entry:
        assert check.decodes == 0, f"{name}: a float32 model's golden file records no reference decode"
        assert pixels_sha256(pixels) == entry["pixels_sha256"], changed
        return
    assert check.reference_sha256 == [entry["reference_pixels_sha256"]], changed + " (its float64 reference decode)"
    assert check.max_levels <= CONTRACT_LEVELS, (
        f"{name}: the float32 decode is {check.max_levels} levels from the float64 reference (at most "
        f"{CONTRACT_LEVELS} is allowed between kinds of device)")
    by_device = entry.get("pixels_sha256_by_device", {})
    if device_kind() in by_device:
        assert pixels_sha256(pixels) == by_device[device_kind()], changed + f" (on {device_kind()})"


def test_every_shipped_diffusion_decoder_is_pinned():
    from coldpress.codec.diffusion.weights import decoders

    pinned = {entry["decoder_id"] for entry in DECODER_INDEX.values()}
    missing = sorted(set(decoders()) - pinned)
    assert not missing, f"shipped diffusion decoders without golden restores: {missing}; run python tools/make_golden.py"


@pytest.mark.parametrize("key", sorted(DECODER_INDEX))
def test_golden_bitstreams_restore_through_each_shipped_diffusion_decoder_to_the_recorded_pixels(key):
    entry = DECODER_INDEX[key]
    data = (GOLDEN / entry["bitstream"]).read_bytes()
    choice = {"decoder": "diffusion", "model": entry["decoder_id"], "detail": entry["detail"], "device": "cpu",
              **({"steps": entry["steps"]} if entry["steps"] else {})}
    pixels = decode_bitstream(data, decoder=choice, device="cpu")
    assert list(pixels.shape) == entry["shape"]
    assert pixels_sha256(pixels) == entry["pixels_sha256"], (
        f"{key}: the diffusion decoder no longer restores this bitstream to the pixels recorded with "
        f"{entry['made_with']}: a dependency (diffusers, torch) or the decoder changed")
