"""Laplacian pyramid, ProGAN's sliced Wasserstein distance and the high-frequency energy ratio;
see coldpress.realism."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._inputs import colour_planes, image_pairs, luminance

#: SWD patch side, smallest pyramid level side, directions, and patches per image per level.
SWD_PATCH = 7
SWD_MIN_SIDE = 16
SWD_DIRECTIONS = 512
SWD_PATCHES_PER_IMAGE = 1024
#: SWD values are multiplied by this before they are returned (ProGAN's reporting convention).
SWD_SCALE = 1e3

_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _pyr_down(a: np.ndarray) -> np.ndarray:
    """Blur with the 5-tap binomial filter and keep every other row and column (a (..., H, W) array).

    scipy's ``"mirror"`` border is OpenCV's BORDER_REFLECT_101, the border of pyrDown and pyrUp."""
    k = _BINOMIAL.astype(a.dtype)
    a = ndimage.convolve1d(a, k, axis=-2, mode="mirror")[..., ::2, :]
    return ndimage.convolve1d(a, k, axis=-1, mode="mirror")[..., ::2]


def _pyr_up(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Insert zeros to ``shape`` (..., H, W) and blur with 4 times the binomial filter (OpenCV's
    pyrUp), one axis at a time (the same result as inserting all zeros first, with less work)."""
    k = (2.0 * _BINOMIAL).astype(a.dtype)  # 2 per axis: the inserted zeros carry no energy
    rows = np.zeros(shape[:-1] + a.shape[-1:], dtype=a.dtype)
    rows[..., ::2, :] = a
    rows = ndimage.convolve1d(rows, k, axis=-2, mode="mirror")
    up = np.zeros(shape, dtype=a.dtype)
    up[..., ::2] = rows
    return ndimage.convolve1d(up, k, axis=-1, mode="mirror")


def pyramid_levels(height: int, width: int, min_side: int = SWD_MIN_SIDE) -> int:
    """Number of Laplacian levels of an image: full resolution down to the last level whose
    smaller side is at least ``min_side`` (ProGAN's rule); 0 when the image itself is smaller."""
    side, n = min(height, width), 0
    while side >= min_side:
        n += 1
        side = (side + 1) // 2
    return n


def laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Burt-Adelson Laplacian pyramid of a float (..., H, W) array (channels first), finest band first; the last of
    the ``levels`` entries is the Gaussian low-pass residual. Adding the bands back (pyrUp each
    coarser one into the next) gives the image back exactly."""
    if levels < 1:
        raise ValueError(f"a Laplacian pyramid needs at least 1 level, got {levels}")
    out, g = [], np.asarray(image)
    if not np.issubdtype(g.dtype, np.floating):
        g = g.astype(np.float64)
    for _ in range(levels - 1):
        down = _pyr_down(g)
        out.append(g - _pyr_up(down, g.shape))
        g = down
    out.append(g)
    return out


def _patches(level: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The 7x7 patches centred on (ys, xs) of a (C, H, W) level: (n, C, 7, 7)."""
    o = np.arange(SWD_PATCH) - SWD_PATCH // 2
    p = level[:, ys[:, None, None] + o[None, :, None], xs[:, None, None] + o[None, None, :]]  # (C, n, 7, 7)
    return p.transpose(1, 0, 2, 3)


def _normalised(desc: np.ndarray, stats: np.ndarray | None = None) -> np.ndarray:
    """Descriptors (n, C, 7, 7) made zero-mean, unit-variance per channel, flattened to (n, C*49)."""
    ref = desc if stats is None else stats
    mean = ref.mean(axis=(0, 2, 3), keepdims=True)
    std = ref.std(axis=(0, 2, 3), keepdims=True)
    std = np.where(std > 0, std, 1.0)  # a flat channel stays zero rather than dividing by zero
    return ((desc - mean) / std).reshape(desc.shape[0], -1)


def _swd(a: np.ndarray, b: np.ndarray, directions: np.ndarray) -> float:
    """Mean over directions (D, d) of the 1-D Wasserstein-1 distance of the projected descriptors."""
    pa = np.sort(directions @ a.T, axis=1)  # (D, n): each row one direction, sorted along it
    pb = np.sort(directions @ b.T, axis=1)
    return float(np.abs(pa - pb).mean(dtype=np.float64))


def _channels_first(image: np.ndarray, what: str) -> np.ndarray:
    """A uint8 image as a contiguous float32 (C, H, W) array: float32 as in ProGAN, channels first so
    that the pyramid's filters and the patch gathering run on contiguous rows."""
    return np.ascontiguousarray(colour_planes(image, what).transpose(2, 0, 1), dtype=np.float32)


def sliced_wasserstein_levels(
    originals,
    reconstructions,
    *,
    levels: int | None = None,
    patches_per_image: int = SWD_PATCHES_PER_IMAGE,
    directions: int = SWD_DIRECTIONS,
    seed: int = 0,
    normalise: str = "each",
) -> list[float]:
    """ProGAN's sliced Wasserstein distance per Laplacian level, finest first, each x 1e3.

    ``originals`` and ``reconstructions``: one uint8 image each, or equal-length lists of pairs of
    the same shape (patches pooled over the list). ``levels`` defaults to ProGAN's rule (down to
    16 px on the smallest image). The same ``seed`` gives the same value."""
    if normalise not in ("each", "originals"):
        raise ValueError(f"normalise must be 'each' (ProGAN) or 'originals', got {normalise!r}")
    if patches_per_image < 2 or directions < 1:
        raise ValueError(
            f"patches_per_image must be at least 2 and directions at least 1, got {patches_per_image} and {directions}"
        )
    pairs = image_pairs(originals, reconstructions)
    planes = [(_channels_first(a, "original"), _channels_first(b, "reconstruction")) for a, b in pairs]
    channels = {p[0].shape[0] for p in planes}
    if len(channels) > 1:
        raise ValueError("the images mix grey and colour; convert them all to RGB (or all to L) first")
    smallest = min(min(a.shape[1:]) for a, _ in planes)
    deepest = pyramid_levels(smallest, smallest)
    if levels is None:
        levels = deepest
    if deepest < 1 or levels > deepest or levels < 1:
        raise ValueError(
            f"{levels if levels else 'no'} pyramid levels down to {SWD_MIN_SIDE} px do not fit the smallest image "
            f"side, {smallest} px (it allows {deepest}); use images of at least {SWD_MIN_SIDE} px a side or fewer levels"
        )
    position_seed, direction_seed = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(position_seed)
    descriptors: list[tuple[list[np.ndarray], list[np.ndarray]]] = [([], []) for _ in range(levels)]
    half = SWD_PATCH // 2
    for a, b in planes:
        for k, (la, lb) in enumerate(zip(laplacian_pyramid(a, levels), laplacian_pyramid(b, levels))):
            h, w = la.shape[1:]
            if h < SWD_PATCH or w < SWD_PATCH:
                raise ValueError(
                    f"pyramid level {k} is {w}x{h} px, smaller than a {SWD_PATCH}x{SWD_PATCH} patch; use fewer levels"
                )
            ys = rng.integers(half, h - half, size=patches_per_image)
            xs = rng.integers(half, w - half, size=patches_per_image)
            descriptors[k][0].append(_patches(la, ys, xs))
            descriptors[k][1].append(_patches(lb, ys, xs))
    dim = next(iter(channels)) * SWD_PATCH * SWD_PATCH
    dirs = np.random.default_rng(direction_seed).standard_normal((directions, dim))
    dirs = (dirs / np.sqrt((dirs**2).sum(axis=1, keepdims=True))).astype(np.float32)  # unit directions
    out = []
    for da, db in descriptors:
        da, db = np.concatenate(da), np.concatenate(db)
        na = _normalised(da)
        nb = _normalised(db, None if normalise == "each" else da)
        out.append(SWD_SCALE * _swd(na, nb, dirs))
    return out


def sliced_wasserstein(originals, reconstructions, **options) -> float:
    """ProGAN's sliced Wasserstein distance averaged over the Laplacian levels, x 1e3 (0 is ideal).

    Same arguments as ``sliced_wasserstein_levels``."""
    return float(np.mean(sliced_wasserstein_levels(originals, reconstructions, **options)))


# -- high-frequency energy ratio -------------------------------------------------------------------


def high_frequency_energy(image: np.ndarray) -> float:
    """Mean square of the finest Laplacian band of the image's luminance (0..255 scale)."""
    gray = luminance(image)
    if min(gray.shape) < 2:
        raise ValueError(f"the image is {gray.shape[1]}x{gray.shape[0]} px; a high-pass band needs at least 2x2")
    band = gray - _pyr_up(_pyr_down(gray), gray.shape)
    return float(np.mean(band * band))


def high_frequency_energy_ratio(original, reconstruction) -> float:
    """Energy of the reconstruction's finest Laplacian band over the original's (luminance).

    1 is ideal; blur gives less than 1, added noise or ringing more. Lists of pairs are pooled:
    the sum of the reconstructions' energies (weighted by pixel count) over the originals'."""
    pairs = image_pairs(original, reconstruction)
    num = den = 0.0
    for a, b in pairs:
        n = a.shape[0] * a.shape[1]
        den += n * high_frequency_energy(a)
        num += n * high_frequency_energy(b)
    if den <= 0.0:
        raise ValueError(
            "the original has no high-frequency energy (it is flat), so the ratio is undefined; "
            "measure it on images with some detail"
        )
    return float(num / den)
