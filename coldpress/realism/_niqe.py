"""NIQE (Mittal, Soundararajan and Bovik 2013) and its pristine model; see coldpress.realism."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from PIL import Image
from scipy import ndimage, special

from ._inputs import luminance

#: NIQE patch side at full scale, in pixels (the second scale uses half of it).
NIQE_PATCH = 96
#: Pristine patches are those whose sharpness is above this fraction of the image's sharpest.
NIQE_SHARPNESS_THRESHOLD = 0.75
#: Features per patch: 18 per scale, 2 scales.
NIQE_FEATURES = 36
#: The pristine model shipped with coldpress (package data; see ``tools/fit_niqe.py``).
NIQE_MODEL_PATH = Path(__file__).with_name("niqe_pristine.json")

_MSCN_WINDOW_SIGMA = 7.0 / 6.0
_MSCN_WINDOW = 7
# The shape grid of the AGGD moment-matching fit (MATLAB's 0.2:0.001:10) and its r(gamma).
_GAMMA_GRID = np.round(np.arange(0.2, 10.0 + 5e-4, 0.001), 3)
_R_GAMMA = special.gamma(2.0 / _GAMMA_GRID) ** 2 / (special.gamma(1.0 / _GAMMA_GRID) * special.gamma(3.0 / _GAMMA_GRID))


def mscn(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MSCN coefficients of a float grey image and the local deviation field ``sigma``.

    ``(I - mu) / (sigma + 1)``, ``mu`` and ``sigma`` the local mean and deviation under a 7x7
    Gaussian window of sigma 7/6 (normalised to sum 1), borders replicated (MATLAB's ``imfilter``
    with ``'replicate'``), as in NIQE's reference code."""
    x = np.arange(_MSCN_WINDOW) - _MSCN_WINDOW // 2
    w = np.exp(-(x**2) / (2 * _MSCN_WINDOW_SIGMA**2))
    w /= w.sum()

    def smooth(a: np.ndarray) -> np.ndarray:
        return ndimage.correlate1d(ndimage.correlate1d(a, w, axis=0, mode="nearest"), w, axis=1, mode="nearest")

    mu = smooth(gray)
    sigma = np.sqrt(np.abs(smooth(gray * gray) - mu * mu))
    return (gray - mu) / (sigma + 1.0), sigma


def aggd_fit(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moment-matching fit of an asymmetric generalised Gaussian to each row of ``samples``.

    Returns ``(alpha, beta_left, beta_right)``, one value per row: the shape (on MATLAB's grid
    0.2:0.001:10) and the left and right scale parameters, as NIQE's ``estimateaggdparam``; NaN
    for a row without both negative and positive values."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    sq = x * x
    neg, pos = x < 0, x > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt(np.where(neg, sq, 0.0).sum(1) / neg.sum(1))
        right_std = np.sqrt(np.where(pos, sq, 0.0).sum(1) / pos.sum(1))
        g = left_std / right_std
        r_hat = np.abs(x).mean(1) ** 2 / sq.mean(1)
        r_norm = r_hat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    ok = np.isfinite(r_norm)
    alpha = np.full(x.shape[0], np.nan)
    if ok.any():
        alpha[ok] = _GAMMA_GRID[np.argmin((_R_GAMMA[None, :] - r_norm[ok, None]) ** 2, axis=1)]
    factor = np.sqrt(special.gamma(1.0 / alpha) / special.gamma(3.0 / alpha))
    return alpha, left_std * factor, right_std * factor


def _blocks(a: np.ndarray, side: int) -> np.ndarray:
    """Non-overlapping ``side`` x ``side`` blocks of a 2-D array whose sides are multiples of ``side``."""
    h, w = a.shape
    return a.reshape(h // side, side, w // side, side).swapaxes(1, 2).reshape(-1, side, side)


# (rows, columns) shifts of MATLAB's circshift in computefeature.m: horizontal, vertical, diagonals
_PAIR_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))


def _patch_features(coefficients: np.ndarray, side: int) -> np.ndarray:
    """The 18 NIQE features of each ``side`` x ``side`` patch of an MSCN field: (patches, 18)."""
    blocks = _blocks(coefficients, side)
    n = blocks.shape[0]
    alpha, bl, br = aggd_fit(blocks.reshape(n, -1))
    columns = [alpha, (bl + br) / 2]
    for dy, dx in _PAIR_SHIFTS:
        pair = blocks * np.roll(blocks, (dy, dx), axis=(1, 2))
        a, l, r = aggd_fit(pair.reshape(n, -1))
        with np.errstate(invalid="ignore"):
            mean = (r - l) * special.gamma(2.0 / a) / special.gamma(1.0 / a)
        columns += [a, mean, l * l, r * r]
    return np.stack(columns, axis=1)


def _half_size(gray: np.ndarray) -> np.ndarray:
    """Bicubic, antialiased half-size image (MATLAB's ``imresize(im, 0.5)``; Pillow's filter)."""
    h, w = gray.shape
    half = Image.fromarray(gray.astype(np.float32)).resize((w // 2, h // 2), Image.Resampling.BICUBIC)
    return np.asarray(half, dtype=np.float64)


def niqe_features(image: np.ndarray, patch: int = NIQE_PATCH) -> tuple[np.ndarray, np.ndarray]:
    """NIQE features of every whole ``patch`` x ``patch`` patch of ``image`` and their sharpness.

    Returns ``(features, sharpness)``: (patches, 36) and (patches,), patches in row-major order;
    sharpness is the mean local deviation (the MSCN ``sigma``) over the patch at full scale. Rows
    of a flat patch hold NaN."""
    if patch < 8 or patch % 2:
        raise ValueError(f"the NIQE patch side must be an even number of at least 8 pixels, got {patch}")
    gray = luminance(image)
    h, w = gray.shape
    rows, cols = h // patch, w // patch
    if rows < 2 or cols < 2:
        raise ValueError(
            f"NIQE needs an image of at least {2 * patch}x{2 * patch} pixels (2 patches of {patch} px a "
            f"side, to estimate the patches' covariance), got {w}x{h}; score a larger image or a larger crop"
        )
    gray = gray[: rows * patch, : cols * patch]
    coefficients, sigma = mscn(gray)
    fine = _patch_features(coefficients, patch)
    coarse = _patch_features(mscn(_half_size(gray))[0], patch // 2)
    sharpness = _blocks(sigma, patch).mean(axis=(1, 2))
    return np.concatenate([fine, coarse], axis=1), sharpness


@dataclass(frozen=True)
class NiqeModel:
    """A multivariate Gaussian of NIQE features: ``mu`` (36,), ``cov`` (36, 36) and how it was made."""

    mu: np.ndarray
    cov: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        mu, cov = np.asarray(self.mu, np.float64), np.asarray(self.cov, np.float64)
        if mu.shape != (NIQE_FEATURES,) or cov.shape != (NIQE_FEATURES, NIQE_FEATURES):
            raise ValueError(
                f"a NIQE model needs mu of shape ({NIQE_FEATURES},) and cov of shape ({NIQE_FEATURES}, "
                f"{NIQE_FEATURES}), got {mu.shape} and {cov.shape}; refit it with tools/fit_niqe.py"
            )
        if not (np.isfinite(mu).all() and np.isfinite(cov).all()):
            raise ValueError("the NIQE model holds NaN or infinite values; refit it with tools/fit_niqe.py")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "cov", cov)

    def to_json(self) -> str:
        return json.dumps({"mu": self.mu.tolist(), "cov": self.cov.tolist(), "info": self.info}, indent=1) + "\n"

    def save(self, path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path) -> "NiqeModel":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"NIQE pristine model {path} is missing; reinstall coldpress (it ships niqe_pristine.json as "
                "package data) or fit one with tools/fit_niqe.py"
            ) from None
        except (OSError, ValueError) as e:
            raise ValueError(f"NIQE pristine model {path} cannot be read ({e}); refit it with tools/fit_niqe.py") from None
        if not isinstance(data, dict) or "mu" not in data or "cov" not in data:
            raise ValueError(f"{path} is not a NIQE model (no 'mu' and 'cov'); refit it with tools/fit_niqe.py")
        return cls(np.asarray(data["mu"]), np.asarray(data["cov"]), dict(data.get("info", {})))


@functools.lru_cache(maxsize=4)
def _cached_model(path: str) -> NiqeModel:
    return NiqeModel.load(path)


def load_niqe_model(path=None) -> NiqeModel:
    """The NIQE pristine model at ``path`` (default: the one shipped with coldpress), cached."""
    return _cached_model(str(Path(path) if path is not None else NIQE_MODEL_PATH))


def _mvg(features: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, int]:
    ok = np.isfinite(features).all(axis=1)
    f = features[ok]
    if f.shape[0] < 2:
        raise ValueError(
            f"{what}: only {f.shape[0]} of {features.shape[0]} patches have defined NIQE features (the others "
            "are flat); NIQE needs textured images, so score a larger or less uniform image"
        )
    return f.mean(axis=0), np.cov(f, rowvar=False), int(f.shape[0])


def niqe(image: np.ndarray, model: NiqeModel | None = None) -> float:
    """NIQE of a uint8 image (at least 192x192 pixels): the distance of its patches' feature
    Gaussian from the pristine model's; lower is more natural. Unitless; with coldpress's own
    pristine model (see the module docstring), not comparable with published NIQE values."""
    model = model if model is not None else load_niqe_model()
    features, _ = niqe_features(image)
    mu, cov, _ = _mvg(features, "NIQE")
    d = model.mu - mu
    return float(math.sqrt(max(0.0, float(d @ np.linalg.pinv((model.cov + cov) / 2) @ d))))


def pristine_patches(image: np.ndarray, threshold: float = NIQE_SHARPNESS_THRESHOLD) -> np.ndarray:
    """Features (k, 36) of the patches of ``image`` sharp enough to be pristine: sharpness above
    ``threshold`` times the image's sharpest patch (NIQE's model-fitting rule), defined features only."""
    features, sharpness = niqe_features(image)
    keep = (sharpness > threshold * sharpness.max()) & np.isfinite(features).all(axis=1)
    return features[keep]


def fit_niqe_model(
    images: Iterable[np.ndarray], threshold: float = NIQE_SHARPNESS_THRESHOLD, info: Mapping | None = None
) -> NiqeModel:
    """Fit a NIQE pristine model on sharp patches of ``images`` (uint8 arrays, each at least
    192x192): the mean and covariance of the pooled ``pristine_patches``. ``info`` is stored with it."""
    parts = [pristine_patches(image, threshold) for image in images]
    if not parts:
        raise ValueError("no images given to fit a NIQE model on; pass sharp, undistorted photographs")
    features = np.concatenate(parts, axis=0)
    if features.shape[0] <= NIQE_FEATURES:
        raise ValueError(
            f"only {features.shape[0]} pristine patches found, fewer than the {NIQE_FEATURES + 1} needed for a "
            "full-rank covariance; fit on more (or larger) sharp photographs"
        )
    mu, cov, count = _mvg(features, "NIQE model")
    meta = {"images": len(parts), "patches": count, "patch": NIQE_PATCH, "sharpness_threshold": threshold}
    meta.update(info or {})
    return NiqeModel(mu, cov, meta)
