"""The knob search of ``coldpress/codec/rate_control.py`` on sizes given as functions of the knob."""

from __future__ import annotations

import math

import pytest

from coldpress.codec import rate_control

Q_MAX = 79 * 16


def coder(size_of, log: list[int]):
    def code(knob: int) -> bytes:
        log.append(knob)
        return bytes(size_of(knob))
    return code


def exponential(base: float, slope: float):
    return lambda knob: int(base * math.exp(slope * knob))


def highest_fit(size_of, budget: int) -> int:
    return max((k for k in range(Q_MAX + 1) if size_of(k) <= budget), default=-1)


@pytest.mark.parametrize("slope", [0.01, 0.025, 0.04])
@pytest.mark.parametrize("budget", [300, 1500, 9000])
def test_the_search_on_codings_finds_the_highest_knob_that_fits(slope, budget):
    size_of = exponential(200, slope)
    log: list[int] = []
    payload, knob = rate_control.fit_on_codings(coder(size_of, log), budget, Q_MAX)
    want = highest_fit(size_of, budget)
    assert knob == want and len(payload) == size_of(want) <= budget
    assert len(log) <= 2 * math.ceil(math.log2(Q_MAX + 1)), log  # never more than about twice a bisection


@pytest.mark.parametrize("ratio", [0.97, 1.0, 1.04])
@pytest.mark.parametrize("budget", [300, 1500, 9000])
def test_a_calibrated_estimate_finds_the_same_knob_in_at_most_three_codings(ratio, budget):
    size_of = exponential(200, 0.025)
    log: list[int] = []
    payload, knob = rate_control.fit_on_estimates(coder(size_of, log), lambda k: size_of(k) * ratio, budget, Q_MAX)
    want = highest_fit(size_of, budget)
    assert knob == want and len(payload) == size_of(want) <= budget
    # one coding calibrates the estimate, one at the fit, one at the knob above when it is within the margin
    assert 1 <= len(log) <= 3, log
    baseline: list[int] = []
    rate_control.fit_on_codings(coder(size_of, baseline), budget, Q_MAX)
    assert len(baseline) > len(log)


def test_a_wrong_estimate_costs_codings_but_never_a_payload_over_the_budget():
    size_of = exponential(200, 0.025)
    # the estimate is off by a factor that drifts along the knobs: calibration at one knob misleads at another
    estimate = lambda k: size_of(k) * (0.6 + 0.0006 * k)  # noqa: E731
    log: list[int] = []
    payload, knob = rate_control.fit_on_estimates(coder(size_of, log), estimate, 2000, Q_MAX)
    assert len(payload) <= 2000 and size_of(knob) == len(payload)
    assert knob >= highest_fit(size_of, 2000) - 1  # the knob above was coded, or estimated far over
    assert log.count(knob) == 1


def test_when_nothing_fits_the_smallest_size_comes_back_without_coding_a_hopeless_latent():
    size_of = exponential(5000, 0.025)
    log: list[int] = []
    payload, smallest = rate_control.fit_on_estimates(coder(size_of, log), size_of, 1000, Q_MAX)
    assert payload is None and log == []  # knob 0 is estimated 4000 bytes over: not coded
    assert smallest == pytest.approx(5000 * 1.02, abs=1)
    payload, smallest = rate_control.fit_on_codings(coder(size_of, []), 1000, Q_MAX)
    assert payload is None and smallest == 5000


def test_a_knob_above_the_fit_within_the_trust_margin_is_coded_to_be_sure():
    sizes = {k: 1000 + k for k in range(Q_MAX + 1)}  # 1 byte per knob: every neighbour is within the margin
    log: list[int] = []
    payload, knob = rate_control.fit_on_estimates(coder(sizes.get, log), sizes.get, 1100, Q_MAX, start=100)
    assert knob == 100 and len(payload) == 1100
    assert 101 in log  # estimated only 1 byte over: coded, not trusted


def test_non_monotone_sizes_still_end_at_a_fit_whose_next_knob_is_over():
    sizes = [int(200 * math.exp(0.025 * k)) for k in range(Q_MAX + 1)]
    sizes[700] = sizes[702] + 50  # a bump
    log: list[int] = []
    payload, knob = rate_control.fit_on_codings(coder(sizes.__getitem__, log), sizes[701], Q_MAX)
    assert len(payload) <= sizes[701] and sizes[knob + 1] > sizes[701]
