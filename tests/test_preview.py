"""The scale search's comparison on windows of large images (coldpress/codec/preview.py)."""

from __future__ import annotations

import numpy as np
import pytest

from coldpress.codec import container, get_codec, preview
from coldpress.codec.models import default_model_available
from synthetic_images import natural_image

pytestmark = pytest.mark.skipif(
    not default_model_available(), reason="no learned model is bundled (coldpress/codec/weights/MODELS.json)"
)


@pytest.fixture(scope="module")
def codec():
    return get_codec("learned", device="cpu")


@pytest.mark.parametrize("size", [(2304, 1728), (1728, 2304), (3000, 400), (300, 200)])
def test_windows_lie_inside_the_image_on_a_grid(size):
    width, height = size
    boxes = preview.windows(width, height)
    assert 1 <= len(boxes) <= preview.WINDOWS
    for col, row, w, h in boxes:
        assert w == h == min(preview.WINDOW, width, height)
        assert 0 <= col <= width - w and 0 <= row <= height - h
    if width * height > preview.WHOLE_MAX_PIXELS:
        assert len(boxes) == preview.WINDOWS and len(set(boxes)) == len(boxes)


@pytest.mark.parametrize("eighths, size", [(8, (420, 300)), (6, (420, 300)), (6, (421, 301))])
def test_windows_with_the_recorded_halo_are_the_whole_previews_pixels(codec, eighths, size, monkeypatch):
    """Full scale and downscaled (Lanczos from the window's box): with the recorded tiling's halo, the
    windows are the whole preview's pixels there, at the borders too: exactly where the coded size is an
    exact fraction in float32 (Pillow keeps the box in float32: 315/420 is, 316/421 is not, and there a
    few samples move by a level)."""
    width, height = size
    img = natural_image(height, width, "RGB", seed=4)
    payload, q16 = codec._fit(img, eighths, 3000)
    params = {"q": q16, "s": eighths}
    whole = codec._reconstruct(payload, params, width, height, preview=True)
    boxes = [(13, 7, 200, 150), (0, 0, width, height), (220, 150, 200, 150)]
    monkeypatch.setattr(preview, "HALO", codec.loaded.decode_tiling.halo)
    for part, (c, r, w, h) in zip(preview.window_pixels(codec, payload, params, width, height, boxes), boxes):
        diff = np.abs(part.astype(int) - whole[r:r + h, c:c + w].astype(int))
        if size == (420, 300):
            assert not diff.any()
        else:
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_a_large_image_is_compared_on_windows_and_its_bitstream_restores(codec, monkeypatch):
    img = natural_image(384, 512, "RGB", seed=12)
    monkeypatch.setattr(preview, "WHOLE_MAX_PIXELS", 100_000)
    compared = []
    original = preview.compare

    def counted(*args):
        compared.append(original(*args))
        return compared[-1]

    monkeypatch.setattr(preview, "compare", counted)
    codec.forget_decodes()
    result = codec.encode(img, 0.04)  # 6/8 would code at 0.07 bpp: compared with 8/8
    assert len(compared) == 1  # two scales fitted (the knob landed low), compared on windows
    verified = codec.decode(result.bitstream)
    fresh = get_codec("learned", device="cpu").decode(result.bitstream)
    assert np.array_equal(verified, fresh)
    assert len(result.bitstream) <= 0.04 * 384 * 512 / 8 and container.unpack(result.bitstream).params["s"] in (8, 6, 4)
