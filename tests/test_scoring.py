"""ResidualScorer: bounded, NaN-safe, never saturates, flags spikes and sustained shifts once,
round-trips exactly."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.models.incidents import IncidentDetector
from vigil.models.scoring import (
    FINE_TAIL,
    NEUTRAL_RAW,
    NORMALISED_MIN_SPREAD,
    ResidualScorer,
    log_two_sided_tail,
    log_upper_tail,
    reduce_residual,
    tail_to_score,
)
from vigil.models.state_codec import dumps, encode, loads


def gaussian(seed: int, count: int, mean: float = 0.0, std: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, std) for _ in range(count)]


def roundtrip(scorer: ResidualScorer) -> ResidualScorer:
    return loads(dumps(scorer), ResidualScorer)


any_float = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(any_float, max_size=120), st.integers(min_value=1, max_value=5))
def test_scores_stay_in_unit_interval_and_state_stays_json(values: list[float], short: int) -> None:
    scorer = ResidualScorer(short_window=short, long_window=short + 7)
    for value in values:
        result = scorer.score_one(value)
        for part in (result.raw, result.likelihood, result.score):
            assert math.isfinite(part)
            assert 0.0 <= part <= 1.0
    assert b"$float" not in dumps(scorer)  # finite strict JSON, ready for Redis


def test_extreme_residuals_after_calm_history_score_top_once_then_hold() -> None:
    scorer = ResidualScorer()
    for value in gaussian(1, 200):
        scorer.score_one(value)
    results = [scorer.score_one(extreme) for extreme in (math.inf, -math.inf, 1e308, -1e308)]
    assert all(r.raw == 1.0 for r in results)  # infinite evidence: the only exact 1.0
    assert 0.9999 < results[0].score < 1.0  # the likelihood weighs bounded evidence
    for repeat in results[1:]:  # reds in a row: held between clear and open, not re-alerted
        assert scorer.clear_threshold <= repeat.score < scorer.threshold
        assert repeat.likelihood > 0.9999
    assert math.isfinite(scorer.sigma) and scorer.sigma < 10.0


def test_spike_after_calm_series_scores_high_and_noise_stays_low() -> None:
    scorer = ResidualScorer()
    calm = [scorer.score_one(value).score for value in gaussian(2, 1500)]
    settled = calm[100:]
    assert sum(score > 0.99 for score in settled) / len(settled) < 0.02
    assert sum(score < 0.9 for score in settled) / len(settled) > 0.85
    assert scorer.score_one(6.0).score > 0.99
    for value in gaussian(12, 40):
        scorer.score_one(value)
    assert scorer.score_one(-8.0).score > 0.99


def test_spike_does_not_inflate_the_spread() -> None:
    scorer = ResidualScorer()
    for value in gaussian(3, 500):
        scorer.score_one(value)
    before = scorer.sigma
    scorer.score_one(1e6)
    assert scorer.sigma < 1.2 * before
    assert 0.8 < before < 1.2  # a unit-normal residual has sigma 1


def test_early_spike_does_not_blind_the_scorer() -> None:
    scorer = ResidualScorer()
    scorer.score_one(0.3)
    scorer.score_one(1e9)
    for value in gaussian(4, 60):  # the likelihood is neutral for its first 5 * short_window
        scorer.score_one(value)
    assert scorer.sigma < 3.0
    assert scorer.score_one(8.0).score > 0.99


def test_likelihood_rises_on_sustained_shift() -> None:
    scorer = ResidualScorer()
    calm = [scorer.score_one(value) for value in gaussian(5, 1000)]
    shifted = [scorer.score_one(value) for value in gaussian(6, 30, mean=1.5)]
    calm_likelihood = [r.likelihood for r in calm[200:]]
    assert max(r.likelihood for r in shifted) > 0.99
    assert sum(r.likelihood for r in shifted[5:]) / 25 > 0.9
    assert sum(calm_likelihood) / len(calm_likelihood) < 0.6


def test_nan_returns_neutral_score_and_leaves_state_untouched() -> None:
    scorer = ResidualScorer()
    for value in gaussian(7, 300):
        scorer.score_one(value)
    state = encode(scorer)
    result = scorer.score_one(math.nan)
    assert result.observed is False
    assert result.raw == NEUTRAL_RAW
    assert 0.0 <= result.score <= 1.0 and 0.0 <= result.likelihood <= 1.0
    assert encode(scorer) == state
    assert scorer.peek() == result


def test_nan_does_not_change_what_follows() -> None:
    with_gaps, without = ResidualScorer(), ResidualScorer()
    for i, value in enumerate(gaussian(8, 400)):
        if i % 7 == 0:
            with_gaps.score_one(math.nan)
        assert with_gaps.score_one(value) == without.score_one(value)


def test_first_residual_is_neutral() -> None:
    result = ResidualScorer().score_one(123.0)
    assert result.raw == NEUTRAL_RAW and result.observed


@pytest.mark.parametrize("split", [0, 5, 17, 60, 700])
def test_roundtrip_gives_identical_outputs(split: int) -> None:
    values = [*gaussian(9, 1000), 7.0, *gaussian(10, 100, mean=2.0)]
    original = ResidualScorer(short_window=5, long_window=300)
    for value in values[:split]:
        original.score_one(value)
    restored = roundtrip(original)
    for value in values[split:]:
        assert restored.score_one(value) == original.score_one(value)


def test_deterministic() -> None:
    values = gaussian(11, 500)
    first = [ResidualScorer().score_one(v) for v in values]
    second = [ResidualScorer().score_one(v) for v in values]
    assert first == second


def test_rejects_bad_windows() -> None:
    with pytest.raises(ValueError, match="long_window"):
        ResidualScorer(short_window=10, long_window=10)


def test_reduce_residual() -> None:
    assert reduce_residual([3.0, -4.0], "l2") == pytest.approx(5.0)
    assert reduce_residual([3.0, -4.0], "rms") == pytest.approx(math.sqrt(12.5))
    assert reduce_residual([3.0, -4.0], "max_abs") == 4.0
    assert reduce_residual([math.nan, -2.0], "rms") == pytest.approx(2.0)
    assert math.isnan(reduce_residual([math.nan, math.nan]))
    assert reduce_residual([1e300, 1e300], "l2") == pytest.approx(math.sqrt(2) * 1e300)
    assert reduce_residual([math.inf, 1.0]) == math.inf
    assert reduce_residual([0.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        reduce_residual([1.0], "mean")  # type: ignore[arg-type]


def test_tail_to_score_is_one_minus_p_then_strictly_compressed() -> None:
    assert tail_to_score(math.log(0.01)) == pytest.approx(0.99, abs=1e-15)
    assert tail_to_score(math.log(FINE_TAIL)) == pytest.approx(1 - FINE_TAIL, abs=1e-15)
    assert tail_to_score(-math.inf) == 1.0
    assert tail_to_score(0.0) == 0.0
    log_tails = [-0.1, -5.0, -13.8, -13.9, -40.0, -745.0, -1e4, -1e6, -1e12, -1e300]
    scores = [tail_to_score(v) for v in log_tails]
    assert all(a < b < 1.0 for a, b in itertools.pairwise(scores))
    # never more confident than the tail itself: P(score >= 1 - q) <= q is kept
    for log_p in log_tails:
        assert 1.0 - tail_to_score(log_p) >= math.exp(log_p) * (1 - 1e-9)
    # continuous where the compression starts
    below = tail_to_score(math.log(FINE_TAIL) - 1e-9)
    assert below - tail_to_score(math.log(FINE_TAIL)) < 1e-12


def test_log_tails_match_arbitrary_precision() -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    for z in (-3.0, 0.0, 1.5, 8.0, 29.9, 30.1, 45.0, 300.0, 1e5):
        exact = float(mpmath.log(mpmath.erfc(mpmath.mpf(z) / mpmath.sqrt(2)) / 2))
        assert log_upper_tail(z) == pytest.approx(exact, rel=1e-11)
    assert log_upper_tail(math.inf) == -math.inf
    assert log_two_sided_tail(0.0) == 0.0
    assert log_two_sided_tail(-2.0) == pytest.approx(math.log(math.erfc(2.0 / math.sqrt(2))))


def test_scores_keep_big_residuals_apart_instead_of_saturating() -> None:
    """The NAB failure: with 1 - p every residual beyond ~8 sigma scored exactly 1.0."""
    calm = ResidualScorer(min_spread=NORMALISED_MIN_SPREAD)
    for value in gaussian(13, 400, std=0.5):
        calm.score_one(value)
    state = dumps(calm)
    raws, scores = [], []
    for residual in (1.5, 2.5, 4.0, 16.0, 400.0, 1e6):  # sigma is about 0.5
        result = loads(state, ResidualScorer).score_one(residual)
        raws.append(result.raw)
        scores.append(result.score)
    assert all(a < b < 1.0 for a, b in itertools.pairwise(raws))
    # the likelihood weighs evidence up to the surprisal cap, then is equally sure
    assert all(a <= b < 1.0 for a, b in itertools.pairwise(scores))
    assert scores[0] < scores[1] < scores[2]  # below the cap, more evidence scores higher


def test_flat_stretch_does_not_turn_a_small_change_into_an_alarm() -> None:
    scorer = ResidualScorer(min_spread=NORMALISED_MIN_SPREAD)  # normalised units: floor 0.1
    for _ in range(600):
        scorer.score_one(0.0)
    assert scorer.score_one(0.05).score < 0.9
    assert scorer.score_one(3.0).score > 0.99  # thirty floors away is news


def test_repeat_filter_keeps_one_incident_open_without_reopening() -> None:
    scorer = ResidualScorer(min_spread=NORMALISED_MIN_SPREAD)  # the stream's, at the defaults
    incidents = IncidentDetector("k")
    values = [*gaussian(14, 600), 9.0, -9.0, 9.0, *gaussian(15, 40)]
    events = []
    scores = []
    for ts, value in enumerate(values):
        result = scorer.score_one(value)
        scores.append(result)
        event = incidents.update(result.score, float(ts))
        if event is not None:
            events.append((ts, event.kind))
    first, second, third = scores[600:603]
    assert first.score > scorer.threshold
    for repeat in (second, third):
        assert repeat.likelihood > scorer.threshold  # still unusual ...
        assert scorer.clear_threshold <= repeat.score < scorer.threshold  # ... held
    opened = [ts for ts, kind in events if kind == "opened" and ts >= 600]
    assert opened == [600]  # one alert for the run
