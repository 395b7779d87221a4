"""Input checks shared by the realism measures: uint8 images, their colour planes and luminance."""

from __future__ import annotations

import numpy as np

#: Luminance weights of NIQE's reference code (MATLAB ``rgb2gray``, ITU-R BT.601), also used by the
#: high-frequency energy ratio.
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)


def colour_planes(image: np.ndarray, what: str = "image") -> np.ndarray:
    """The colour channels of a uint8 image as float64 (H, W, C), C = 1 or 3 (alpha left out)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"the {what} must be a uint8 array, got {a.dtype}; convert it to 8 bits first")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(
            f"the {what} has shape {a.shape}; give an (H, W) grey image or an (H, W, C) image with "
            "C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA)"
        )
    if a.shape[2] in (2, 4):
        a = a[:, :, :-1]
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"the {what} is empty ({a.shape[1]}x{a.shape[0]} pixels); give a real image")
    return a.astype(np.float64)


def luminance(image: np.ndarray) -> np.ndarray:
    """Luminance of a uint8 image as float64 (H, W) on 0..255 (``LUMA_WEIGHTS``; a grey image as it is)."""
    planes = colour_planes(image)
    if planes.shape[2] == 1:
        return planes[:, :, 0]
    return planes @ np.asarray(LUMA_WEIGHTS)


def image_list(images, what: str) -> list[np.ndarray]:
    """One image or a sequence of images as a list of arrays."""
    if isinstance(images, np.ndarray):
        return [images]
    out = [np.asarray(i) for i in images]
    if not out:
        raise ValueError(f"no {what} given; pass an image array or a non-empty list of them")
    return out


def image_pairs(originals, reconstructions) -> list[tuple[np.ndarray, np.ndarray]]:
    a = image_list(originals, "originals")
    b = image_list(reconstructions, "reconstructions")
    if len(a) != len(b):
        raise ValueError(
            f"{len(a)} originals but {len(b)} reconstructions; pass one reconstruction per original, in the same order"
        )
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            raise ValueError(
                f"pair {i}: the original is {x.shape} and the reconstruction {y.shape}; compare an image "
                "with its own decoding, at the same size"
            )
    return list(zip(a, b))
