"""The scale search's comparison on large images: the smaller candidate whole, the larger on windows.

With scale search the encoder fits a large image at two scales when the first knob lands low and keeps
the one that reconstructs clearly better (``learned.py``). Comparing whole reconstructions costs two
syntheses (4 megapixels at 0.03 bpp: 11 of the encode's 21 s on 2 Zen 3 cores); the verify decode that
follows then costs nothing, since the chosen one's preview is its decode (``decode_memo.py``).

Above ``WHOLE_MAX_PIXELS`` the smaller-scale candidate, the cheaper synthesis and the more frequent winner
at these rates, is still reconstructed whole (kept for the verify decode), and the larger one only on
``WINDOWS`` squares of ``WINDOW`` pixels on a regular grid, each synthesised from the latents around it
with ``HALO`` pixels of context and, when that candidate is downscaled too, upscaled as its whole decode
is (Lanczos, from the window's box in the coded image); both are compared on those windows. The halo is
narrower than the recorded tiling's (which covers the whole receptive field and gives a decode's exact
pixels; with 48 pixels, 3 % of a kodim05 window's samples differ from the whole decode's, by at most 3
levels): windows are only compared, never archived. When the larger candidate wins, its verify decode
runs the whole synthesis, as a restore would. At 4 megapixels and 0.03 bpp (the bundled coffee photo)
encode with verify took 21 s comparing whole and 15 s on windows, for the same choice and bitstream.

Measured before adoption (64 two-scale choices, BSDS500 test images and SUN scenes at 0.03 and
0.05 bpp, windows covering a quarter of each image against the whole): the same choice on 52 of 64, and
on 14 of the 16 0.8-megapixel SUN scenes, whose two other choices were within 0.04 dB of a tie.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

#: Images up to this many pixels (1.5 megapixels) compare both candidates whole.
WHOLE_MAX_PIXELS = 3 << 19
#: The larger candidate's windows: this many squares of this many pixels a side, with this much halo.
WINDOWS, WINDOW, HALO = 8, 256, 48
#: Pixels of the coded image beyond a window's box for the Lanczos upscaling (its support is 3).
RESAMPLE_MARGIN = 4


def windowed(codec, width: int, height: int) -> bool:
    """Whether the scale search of this image compares on windows (large image, a model whose recorded
    tiling covers the receptive field and decodes in float32, so that its preview is its decode)."""
    return width * height > WHOLE_MAX_PIXELS and codec.windows_preview_ok()


def windows(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """(col, row, w, h) of ``WINDOWS`` windows of ``WINDOW`` pixels on a regular grid over the image,
    centred in their cells (of the grids of ``WINDOWS`` cells, the one whose cells are the squarest)."""
    size = min(WINDOW, width, height)
    grids = [(n, WINDOWS // n) for n in range(1, WINDOWS + 1) if WINDOWS % n == 0]  # (rows, columns)
    ny, nx = min(grids, key=lambda g: abs(math.log((width / g[1]) / (height / g[0]))))
    out = []
    for i in range(ny):
        for j in range(nx):
            row = min(max(0, round((i + 0.5) * height / ny - size / 2)), height - size)
            col = min(max(0, round((j + 0.5) * width / nx - size / 2)), width - size)
            out.append((col, row, size, size))
    return out


def window_pixels(codec, payload: bytes, params: dict[str, Any], width: int, height: int,
                  boxes: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
    """The float32 preview of a payload on each window (its latent decoded once)."""
    q16, (sw, sh) = codec.coded_geometry(params, width, height)
    y_hat, inv_gain = codec._latent_of(payload, q16, sw, sh, preview=True)
    codec.syntheses += 1
    fx, fy = sw / width, sh / height
    out = []
    for col, row, w, h in boxes:
        if (sw, sh) == (width, height):
            out.append(codec._region_pixels(y_hat, inv_gain, (col, row, col + w, row + h), HALO, preview=True))
            continue
        box = (col * fx, row * fy, (col + w) * fx, (row + h) * fy)
        x0, y0 = max(0, math.floor(box[0]) - RESAMPLE_MARGIN), max(0, math.floor(box[1]) - RESAMPLE_MARGIN)
        x1, y1 = min(sw, math.ceil(box[2]) + RESAMPLE_MARGIN), min(sh, math.ceil(box[3]) + RESAMPLE_MARGIN)
        region = codec._region_pixels(y_hat, inv_gain, (x0, y0, x1, y1), HALO, preview=True)
        shifted = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
        out.append(np.asarray(Image.fromarray(region).resize((w, h), Image.Resampling.LANCZOS, box=shifted)))
    return out


def compare(codec, rgb: np.ndarray, larger: tuple[bytes, dict[str, Any]], smaller: tuple[bytes, dict[str, Any]]
            ) -> tuple[float, float]:
    """(MSE of the larger-scale candidate, MSE of the smaller) on the windows: the smaller reconstructed
    whole (and kept for the verify decode), the larger on the windows only."""
    height, width = rgb.shape[:2]
    boxes = windows(width, height)
    whole = codec._reconstruct(*smaller, width, height, preview=True)
    parts = window_pixels(codec, *larger, width, height, boxes)
    ref = rgb.astype(np.float64)

    def mse(pixels: list[np.ndarray]) -> float:
        return float(np.mean([np.mean((p.astype(np.float64) - ref[r:r + h, c:c + w]) ** 2)
                              for p, (c, r, w, h) in zip(pixels, boxes)]))

    return mse(parts), mse([whole[r:r + h, c:c + w] for c, r, w, h in boxes])
