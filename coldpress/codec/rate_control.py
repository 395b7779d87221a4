"""Rate control of the learned codec: the highest rate knob whose real bitstream fits a byte budget.

The search knows nothing of networks: it is given ``code(knob) -> bytes`` (a real coding of one latent)
and, where the model has one, ``estimate(knob) -> float`` (its float32 size estimate in bytes,
``rate_estimate.py``). ``fit_on_estimates`` steers the search by the estimates, calibrated by the real
codings made so far, and codes for real only the knobs it has to (1 or 2 on most images);
``fit_on_codings`` measures every probe on a real coding (3 to 6 codings; models without an estimator).
Both share ``bracket``, a secant search on the log size, and both keep only a real coding within the
budget. Measurements: results/search/README.md.
"""

from __future__ import annotations

import math
from typing import Callable

from coldpress.codec.rate_estimate import PRIOR_SIZE_RATIO

#: Prior slope of log(payload size) against the knob (in 1/16ths), for the first prediction of the knob
#: search: about 0.025 on Kodak and BSDS500 images with cp-extreme-s16-v2 (x7.7 over the 80 knobs).
LOG_SIZE_SLOPE = 0.025
#: The knob above the chosen one is taken as too big without coding it when its calibrated size
#: estimate exceeds the budget by this many bytes plus this fraction of the budget (``fit_on_estimates``).
TRUST_MARGIN_BYTES, TRUST_MARGIN_FRACTION = 24, 0.005
#: Probes on estimates in a row that may fail to halve the bracket before a midpoint (``bracket``).
ESTIMATE_PATIENCE = 4

Coder = Callable[[int], bytes]


def fit_on_estimates(code: Coder, estimate: Callable[[int], float], budget: int, q_max: int, start: int = 0
                     ) -> tuple[bytes | None, int]:
    """(payload at the highest knob in 0..``q_max`` that fits ``budget``, or None; that knob, or the
    smallest payload size, measured or estimated, when none fits). ``start``: a predicted knob.

    The search runs on ``estimate``, calibrated by the real codings made so far (the ratio of the
    nearest one's size to its estimate), and codes for real only the knob it predicts as the highest
    that fits: at the end the kept knob's payload is a real coding within the budget, and the knob above
    it was either coded and is too big, or is estimated over the budget by more than
    ``TRUST_MARGIN_BYTES`` (plus ``TRUST_MARGIN_FRACTION`` of the budget: about 3 times the estimate's
    largest error measured next to a coding). The same holds at knob 0: a latent whose knob 0 is
    estimated that far over is not coded at all.
    """
    estimates: dict[int, float] = {}
    coded: dict[int, bytes] = {}

    def estimated(knob: int) -> float:
        if knob not in estimates:
            estimates[knob] = estimate(knob)
        return estimates[knob]

    def predicted(knob: int) -> float:
        if not coded:
            return estimated(knob) * PRIOR_SIZE_RATIO
        near = min(coded, key=lambda k: (abs(k - knob), k))
        return estimated(knob) * len(coded[near]) / estimated(near)

    margin = TRUST_MARGIN_BYTES + TRUST_MARGIN_FRACTION * budget
    fits, over, fit_payload = -1, q_max + 1, None
    start = start or q_max // 2  # no prediction: the middle of the range, as near as a guess gets
    while over - fits > 1:
        knob = bracket(predicted, budget, start, fits, over, patience=ESTIMATE_PATIENCE)[0]
        if knob == fits:  # the knob above the highest known fit is estimated too big
            if predicted(fits + 1) - budget > margin:
                break
            knob = fits + 1
        coded[knob] = code(knob)
        if len(coded[knob]) <= budget:
            fits, fit_payload = knob, coded[knob]
        else:
            over = knob
        start = knob
    if fit_payload is None:
        return None, len(coded[0]) if 0 in coded else round(predicted(0))
    return fit_payload, fits


def fit_on_codings(code: Coder, budget: int, q_max: int, start: int = 0) -> tuple[bytes | None, int]:
    """``fit_on_estimates`` measuring every probe on a real coding (models without a rate estimator);
    when none fits, the second value is knob 0's real size."""
    payloads: dict[int, bytes] = {}

    def size(knob: int) -> int:
        payloads[knob] = code(knob)
        return len(payloads[knob])

    fits, _, sizes = bracket(size, budget, start, -1, q_max + 1)
    if fits < 0:
        return None, sizes[0]
    return payloads[fits], fits


def bracket(size_of: Callable[[int], float], budget: int, start: int, fits: int, over: int, patience: int = 2
            ) -> tuple[int, int, dict[int, float]]:
    """(fits, over, sizes): the bracket narrowed to adjacent knobs, ``fits`` the highest knob whose
    ``size_of`` is within ``budget`` (-1: none) and ``over`` the next, starting from the bracket given.

    Predicted: the log of the size is close to linear in the knob, so after the first probe (at
    ``start``) the knob where the size meets the budget is predicted with the prior slope
    ``LOG_SIZE_SLOPE``, then by the secant through the two nearest probes on either side of the
    budget (or the two on one side); the probe is the prediction rounded down, kept strictly
    inside the bracket (so a prediction at the highest fitting knob verifies the knob above it).
    After ``patience`` probes in a row that did not halve the bracket, a midpoint: never more than
    about twice a bisection's probes at the default (codings); estimates, cheaper and smoother, get
    more patience.
    """
    sizes: dict[int, float] = {}
    knob, slow = min(max(fits + 1, start), over - 1), 0
    while over - fits > 1:
        sizes[knob] = size_of(knob)
        width = over - fits
        if sizes[knob] <= budget:
            fits = knob
        else:
            over = knob
        if over - fits <= 1:
            break
        slow = slow + 1 if (over - fits) * 2 > width else 0
        if slow >= patience:
            knob, slow = (fits + over) // 2, 0
            continue
        knob = min(max(math.floor(predict_knob(sizes, fits, over, budget)), fits + 1), over - 1)
    return fits, over, sizes


def predict_knob(sizes: dict[int, float], fits: int, over: int, budget: int) -> float:
    """The (real-valued) knob where the log size reaches log(budget), from the probes so far."""
    target = math.log(budget)
    if fits in sizes and over in sizes:
        a, b = fits, over
    else:
        side = sorted(sizes, reverse=fits in sizes)  # the nearest probes on the known side
        a, b = (side[0], side[1]) if len(side) > 1 and abs(side[0] - side[1]) >= 4 else (side[0], None)
    la = math.log(max(sizes[a], 1.0))
    if b is None:
        return a + (target - la) / LOG_SIZE_SLOPE
    slope = (math.log(max(sizes[b], 1.0)) - la) / (b - a)
    if not slope > 1e-6:
        slope = LOG_SIZE_SLOPE
    return a + (target - la) / slope
