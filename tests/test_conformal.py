"""AdaptiveConformal: coverage holds through a regime change; updates, purity, round-trips."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.models.conformal import AdaptiveConformal
from vigil.models.state_codec import dumps, encode, loads

LENGTH = 4000


def regime_change_series(seed: int) -> list[tuple[float, float]]:
    """(forecast, observed): a seasonal mean, noise tripling halfway."""
    rng = random.Random(seed)
    pairs = []
    for t in range(LENGTH):
        forecast = math.sin(t / 10.0)
        pairs.append((forecast, forecast + rng.gauss(0.0, 1.0 if t < LENGTH // 2 else 3.0)))
    return pairs


def coverage_of(conformal: AdaptiveConformal, pairs: list[tuple[float, float]]) -> list[bool]:
    hits = []
    for forecast, observed in pairs:
        lower, upper = conformal.interval([forecast])[0]
        hits.append(lower <= observed <= upper)
        conformal.learn_one([forecast], [observed])
    return hits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coverage_within_two_points_through_regime_change(seed: int) -> None:
    hits = coverage_of(AdaptiveConformal(alpha=0.1), regime_change_series(seed))
    overall = sum(hits[50:]) / len(hits[50:])
    after = sum(hits[LENGTH // 2 :]) / (LENGTH // 2)
    assert abs(overall - 0.9) <= 0.02
    assert abs(after - 0.9) <= 0.02


def test_fixed_level_undercovers_after_change() -> None:
    """The same quantile without the alpha_t feedback misses the target: the update matters."""
    hits = coverage_of(AdaptiveConformal(gamma=1e-9, window=500), regime_change_series(0))
    early_after = sum(hits[LENGTH // 2 : LENGTH // 2 + 300]) / 300
    assert early_after < 0.8


def test_issue_observe_covers_every_horizon_step() -> None:
    rng = random.Random(3)
    horizon = 3
    conformal = AdaptiveConformal(horizon=horizon, alpha=0.1)
    value = 0.0
    for t in range(4000):
        value += rng.gauss(0.0, 1.0 if t < 2000 else 3.0)
        conformal.observe(value)
        conformal.issue([value] * horizon)  # persistence forecast
    for step_coverage in conformal.coverage:
        assert abs(step_coverage - 0.9) <= 0.02
    widths = [conformal.half_width(step) for step in range(horizon)]
    assert widths[0] < widths[1] < widths[2]  # a random walk spreads with the horizon


def test_observe_scores_the_interval_that_was_issued() -> None:
    conformal = AdaptiveConformal(horizon=2, alpha=0.1, gamma=0.1, window=10)
    for score in [1.0] * 10:
        conformal.learn_one([0.0, 0.0], [score, score])
    lower, upper = conformal.issue([0.0, 0.0])[0]
    assert (lower, upper) == (-1.0, 1.0)
    alpha_before = conformal.alpha_t
    conformal.observe(0.5)  # step 1 of the issued forecast: inside (-1, 1)
    assert conformal.alpha_t[0] == pytest.approx(alpha_before[0] + 0.1 * 0.1)
    assert conformal.alpha_t[1] == alpha_before[1]  # nothing two steps old was issued yet


def test_alpha_update_rule() -> None:
    conformal = AdaptiveConformal(alpha=0.1, gamma=0.05, window=5)
    conformal.learn_one([0.0], [1.0])  # zero-width interval: a miss
    assert conformal.alpha_t[0] == pytest.approx(0.1 + 0.05 * (0.1 - 1.0))
    conformal.learn_one([0.0], [0.5])  # width 1 now: a hit
    assert conformal.alpha_t[0] == pytest.approx(0.1 + 0.05 * (0.1 - 1.0) + 0.05 * 0.1)


def test_interval_is_pure_and_zero_width_before_data() -> None:
    conformal = AdaptiveConformal(horizon=2)
    assert conformal.interval([1.0, 2.0]) == [(1.0, 1.0), (2.0, 2.0)]
    for i in range(50):
        conformal.learn_one([0.0, 0.0], [float(i % 5), float(i % 7)])
    state = encode(conformal)
    assert conformal.interval([1.0, 2.0]) == conformal.interval([1.0, 2.0])
    assert encode(conformal) == state
    with pytest.raises(ValueError, match="forecast steps"):
        conformal.interval([1.0])


def test_non_finite_outcomes_are_skipped() -> None:
    conformal = AdaptiveConformal()
    conformal.learn_one([0.0], [math.nan])
    conformal.learn_one([math.inf], [1.0])
    conformal.observe(None)
    assert conformal.alpha_t == [0.1] and math.isnan(conformal.coverage[0])


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=150),
    st.integers(1, 3),
    st.integers(0, 150),
)
def test_roundtrip_and_ordered_bounds(values: list[float], horizon: int, split: int) -> None:
    original = AdaptiveConformal(horizon=horizon, gamma=0.05, window=20)

    def run(conformal: AdaptiveConformal, chunk: list[float]) -> list[list[tuple[float, float]]]:
        issued = []
        for value in chunk:
            conformal.observe(value)
            bounds = conformal.issue([value * 0.5] * horizon)
            assert all(lower <= upper for lower, upper in bounds)
            issued.append(bounds)
        return issued

    run(original, values[:split])
    restored = loads(dumps(original), AdaptiveConformal)
    assert run(restored, values[split:]) == run(original, values[split:])
    assert encode(restored) == encode(original)
