"""One check suite over every per-key estimator (river's ``checks`` idea) and KeyState as a whole.

Each case builds an estimator with fixed parameters and feeds it one value per event through a
small driver that exercises its whole public surface. The checks: a state round trip (through
the codec's dict and through orjson bytes) continues bit-identically; ``clone`` gives a fresh
estimator equal to a newly built one; two estimators fed the same data agree exactly; and any
finite input, however large, keeps the state finite (strict JSON, no tagged non-finite float)
and the outputs finite or None. A new estimator gets all of this by adding one ``Case``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.models.admission import TrainingAdmission
from vigil.models.calendar import calendar_features
from vigil.models.combination import PersistenceCombination
from vigil.models.conformal import AdaptiveConformal
from vigil.models.drift import PageHinkley, ResidualDriftMonitor
from vigil.models.incidents import IncidentDetector
from vigil.models.normalizer import RunningNormalizer
from vigil.models.novelty import ContextNovelty
from vigil.models.range_break import RangeBreak
from vigil.models.reference import ReferenceProfile
from vigil.models.scoring import ResidualScorer, reduce_residual
from vigil.models.season import SeasonalLags
from vigil.models.state_codec import clone, decode, dumps, encode, loads
from vigil.models.window import GapPolicy, WindowBuffer
from vigil.settings import DetectorConfig, ModelConfig, ModelGroup
from vigil.stream.key_state import KeyState, PendingForecast


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Any]
    feed: Callable[[Any, int, float], Any]  # (estimator, event index, value) -> outputs


def _present(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _feed_normalizer(norm: RunningNormalizer, t: int, x: float) -> Any:
    vector = [_present(x), None if t % 7 == 0 else _present(-x / 3)]
    norm.update(vector)
    return norm.normalize(vector), norm.std(), norm.denormalize(np.array([[0.5, -0.5]]))


def _feed_window(window: WindowBuffer, t: int, x: float) -> Any:
    window.push([x, None if t % 5 == 0 else 2 * x])
    return window.array(), window.observed_mask(), window.missing_count, window.last()


def _feed_scorer(scorer: ResidualScorer, t: int, x: float) -> Any:
    return scorer.score_one(x)


def _feed_incidents(detector: IncidentDetector, t: int, x: float) -> Any:
    return detector.update(1.0 - math.exp(-abs(x)), float(t))  # NaN score: ignored


def _feed_conformal(conformal: AdaptiveConformal, t: int, x: float) -> Any:
    conformal.observe(_present(x))
    forecast = [0.5 * x, x, -x] if math.isfinite(x) else [0.0, 0.0, 0.0]
    return conformal.issue(forecast), conformal.alpha_t


def _feed_conformal_aligned(conformal: AdaptiveConformal, t: int, x: float) -> Any:
    conformal.learn_one([0.0, 1.0], [_present(x), _present(x / 2)])
    return conformal.interval([1.0, 2.0])


def _feed_drift(monitor: ResidualDriftMonitor, t: int, x: float) -> Any:
    return monitor.update(x, float(t)), monitor.lr_scale


def _feed_page_hinkley(test: PageHinkley, t: int, x: float) -> Any:
    return test.update(abs(x)), test.statistic


def _feed_admission(gate: TrainingAdmission, t: int, x: float) -> Any:
    return gate.admit(abs(x) > 1.5), gate.in_level_shift


def _feed_novelty(detector: ContextNovelty, t: int, x: float) -> Any:
    return detector.raw_novelty(x), detector.score_one(x), len(detector.seen)


def _feed_reference(profile: ReferenceProfile, t: int, x: float) -> Any:
    return profile.score_one([x, x / 2 + 1 if t % 5 else math.nan]), profile.ready


def _feed_range_break(detector: RangeBreak, t: int, x: float) -> Any:
    return detector.breaks(x), detector.score_one(x), detector.low, detector.high


def _feed_season(lags: SeasonalLags, t: int, x: float) -> Any:
    """Normalised values reach it clipped to +-20 (the normaliser's clip); raw ones as they are."""
    value = max(-20.0, min(20.0, x)) if math.isfinite(x) else None
    return lags.push([value, None if t % 4 == 0 else value], x, 10_800.0), lags.season


def _feed_combination(combination: PersistenceCombination, t: int, x: float) -> Any:
    """As the processor drives it: observe the event, then publish a forecast from its last
    (gap-filled) value, in normalised units (clipped to +-20 like the normaliser's)."""
    value = max(-20.0, min(20.0, x)) if math.isfinite(x) else math.nan
    combination.observe([value, value / 2 if t % 4 else math.nan], skipped=int(t % 29 == 0))
    last = [0.0 if math.isnan(value) else value, 1.0]
    forecast = np.array([[0.5 * last[0], 0.9], [0.2 * last[0], 0.8]])
    return combination.combine(forecast, last), combination.weights()


def _new_key_state() -> KeyState:
    group = ModelGroup(
        name="g",
        channels=["a", "b"],
        model=ModelConfig(input_size=2, window=6, horizon=2),
        detector=DetectorConfig(warmup_events=5, short_window=4, long_window=40),
        gap_policy="interpolate",
    )
    return KeyState.new("k", group)


def _feed_key_state(state: KeyState, t: int, x: float) -> Any:
    """One event the way the series processor drives a key, with a persistence forecast."""
    vector = [_present(x), None if t % 4 == 0 else _present(x / 2 + 1)]
    state.normalizer.update(vector)
    normalised = state.normalizer.normalize(vector)
    state.window.push([*normalised, *calendar_features(1.7e9 + 3600.0 * t)])  # + the calendar
    residual = math.nan
    if state.pending is not None:
        forecast = state.pending.values[0]
        observed = [math.nan if n is None else n for n in normalised]
        residual = reduce_residual([o - f for o, f in zip(observed, forecast, strict=True)])
    result = state.scorer.score_one(residual)
    novelty = state.novelty.score_one(math.nan if vector[0] is None else vector[0])
    assert state.range_break is not None
    range_part = state.range_break.score_one(math.nan if vector[0] is None else vector[0])
    incident = state.incidents.update(max(result.score, novelty, range_part), float(t))
    signal = state.drift.update(residual, float(t)) if math.isfinite(residual) else None
    admitted = state.admission.admit(state.incidents.active)
    for channel, conformal in enumerate(state.conformal):
        conformal.observe(vector[channel])
    last = state.window.last().astype(np.float64)[:2]  # the values, not the calendar columns
    raw = last * state.normalizer.std() + np.asarray(state.normalizer.mean)
    horizon = state.conformal[0].horizon
    state.pending = PendingForecast([last.tolist()] * horizon, 0)
    bounds = [c.issue([float(raw[ch])] * horizon) for ch, c in enumerate(state.conformal)]
    state.last_ts = float(t)
    state.events += 1
    if vector[0] is not None:
        state.recent.append(vector[0])
    return result, incident, signal, admitted, raw, bounds, list(state.recent)


def _window_case(policy: GapPolicy) -> Case:
    return Case(f"window_{policy.value}", lambda: WindowBuffer(6, 2, policy), _feed_window)


CASES = [
    Case("normalizer", lambda: RunningNormalizer(channels=2, max_count=50), _feed_normalizer),
    *(_window_case(policy) for policy in GapPolicy),
    Case("scorer", lambda: ResidualScorer(short_window=5, long_window=40), _feed_scorer),
    Case(
        "incidents",
        lambda: IncidentDetector("k", cooldown_events=3, warmup_events=5),
        _feed_incidents,
    ),
    Case("conformal", lambda: AdaptiveConformal(horizon=3, gamma=0.05, window=20), _feed_conformal),
    Case(
        "conformal_aligned",
        lambda: AdaptiveConformal(horizon=2, window=10),
        _feed_conformal_aligned,
    ),
    Case("drift", lambda: ResidualDriftMonitor(min_instances=10, half_life=20.0), _feed_drift),
    Case("page_hinkley", lambda: PageHinkley(min_instances=5), _feed_page_hinkley),
    Case("admission", lambda: TrainingAdmission(readmit_after=3), _feed_admission),
    # a small memory so that forgetting is exercised too
    Case(
        "novelty",
        lambda: ContextNovelty(bins=4, orders=2, capacity=12, rest_events=3),
        _feed_novelty,
    ),
    Case("range_break", lambda: RangeBreak(tolerance=0.05, warmup=3), _feed_range_break),
    # a short reference (frozen after 40 events) so that scoring after the freeze is exercised
    Case(
        "reference",
        lambda: ReferenceProfile(channels=2, events=40, window=4, order=3, smooth=2),
        _feed_reference,
    ),
    Case("season_auto", lambda: SeasonalLags(horizon=2, channels=2), _feed_season),
    Case("season_fixed", lambda: SeasonalLags(horizon=3, channels=2, period=2), _feed_season),
    Case(
        "combination",
        lambda: PersistenceCombination(horizon=2, channels=2, half_life=10.0),
        _feed_combination,
    ),
    Case("key_state", _new_key_state, _feed_key_state),
]
IDS = [case.name for case in CASES]


def stream(seed: int, count: int) -> list[float]:
    """Gaussian values with spikes and missing (NaN) ones: every estimator has work to do."""
    rng = random.Random(seed)
    values = []
    for t in range(count):
        x = rng.gauss(0.0, 1.0)
        if t % 37 == 36:
            x *= 8.0
        if t % 23 == 11:
            x = math.nan
        values.append(x)
    return values


def canon(value: Any) -> Any:
    """Outputs in a form ``==`` compares bit for bit (NaN equal to NaN, -0.0 not equal to 0.0)."""
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, canon(value.tolist()))
    if isinstance(value, np.generic):
        return canon(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, canon(dataclasses.asdict(value)))
    if isinstance(value, dict):
        return tuple(sorted((k, canon(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(canon(v) for v in value)
    return value


def run(estimator: Any, case: Case, values: list[float], start: int = 0) -> list[Any]:
    return [canon(case.feed(estimator, start + t, x)) for t, x in enumerate(values)]


def _strict(raw: bytes) -> Any:
    def reject(constant: str) -> Any:
        raise AssertionError(f"{constant} in stored state")

    return json.loads(raw, parse_constant=reject)


# ---- (a) state round trip ------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("split", [0, 7, 150])
def test_round_trip_continues_bit_identically(case: Case, split: int) -> None:
    values = stream(1, 300)
    original = case.build()
    run(original, case, values[:split])
    cls = type(original)
    raw = dumps(original)
    _strict(raw)
    via_dict = decode(encode(original), cls)
    via_bytes = loads(raw, cls)
    assert encode(via_dict) == encode(original) == encode(via_bytes)
    rest = values[split:]
    expected = run(original, case, rest, split)
    assert run(via_dict, case, rest, split) == expected
    assert run(via_bytes, case, rest, split) == expected
    assert dumps(via_bytes) == dumps(original)


# ---- (b) clone -----------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_clone_is_fresh_and_independent(case: Case) -> None:
    trained = case.build()
    run(trained, case, stream(2, 120))
    before = encode(trained)
    fresh = clone(trained)
    assert type(fresh) is type(trained)
    assert encode(fresh) == encode(case.build())
    run(fresh, case, stream(3, 50))
    assert encode(trained) == before  # nothing shared with the original


# ---- (c) determinism -----------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_same_parameters_and_data_give_the_same_outputs(case: Case) -> None:
    values = stream(4, 250)
    first, second = case.build(), case.build()
    assert run(first, case, values) == run(second, case, values)
    assert encode(first) == encode(second)


# ---- (d) huge but finite input -------------------------------------------------------------
def _finite_or_none(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, np.ndarray | np.generic):
        return bool(np.isfinite(value).all()) if np.asarray(value).dtype.kind == "f" else True
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _finite_or_none(dataclasses.asdict(value))
    if isinstance(value, dict):
        return all(_finite_or_none(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite_or_none(v) for v in value)
    raise TypeError(f"unexpected output type {type(value).__name__}")


EXTREMES = [
    1e308,
    -1e308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    1e-308,
    -1e-308,
    5e-324,
    1e154,
    -1e200,
    0.0,
    -0.0,
]
finite_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-10.0, 10.0),
    st.sampled_from(EXTREMES),
)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@settings(max_examples=40, deadline=None)
@given(values=st.lists(finite_values, min_size=1, max_size=60))
def test_any_finite_input_keeps_state_finite_and_outputs_defined(
    case: Case, values: list[float]
) -> None:
    estimator = case.build()
    run(estimator, case, stream(5, 30))  # some history first, so there is something to break
    for t, x in enumerate(values, start=30):
        output = case.feed(estimator, t, x)
        assert _finite_or_none(output), f"non-finite output after {x!r}: {output!r}"
    raw = dumps(estimator)
    assert b"$float" not in raw, "non-finite number in the state"
    _strict(raw)
    restored = loads(raw, type(estimator))
    after = len(values) + 30
    assert run(restored, case, [1.0, -2.5], after) == run(estimator, case, [1.0, -2.5], after)


# ---- the codec itself ----------------------------------------------------------------------
def test_non_finite_numbers_round_trip_as_strict_json() -> None:
    conformal = AdaptiveConformal(horizon=2)
    conformal.issue([math.nan, math.inf])  # a broken forecast is stored, not dropped
    raw = dumps(conformal)
    _strict(raw)
    restored = loads(raw, AdaptiveConformal)
    restored.observe(1.0)
    conformal.observe(1.0)
    assert canon(restored.issue([0.0, 0.0])) == canon(conformal.issue([0.0, 0.0]))
    assert dumps(restored) == dumps(conformal)


def test_decode_rejects_state_that_does_not_fit() -> None:
    stored = encode(WindowBuffer(4, 2))
    with pytest.raises(TypeError, match="expected ResidualScorer"):
        decode(stored, ResidualScorer)
    with pytest.raises(ValueError, match="unknown fields"):
        decode({**stored, "extra": 1}, WindowBuffer)
    with pytest.raises(ValueError, match="does not fit"):
        decode({**stored, "length": 5}, WindowBuffer)  # the ring no longer matches its length
    with pytest.raises(ValueError, match="known \\$type"):
        decode({**stored, "$type": "os.system"}, WindowBuffer)


def test_key_state_maps_the_group_settings() -> None:
    state = _new_key_state()
    assert (state.scorer.short_window, state.scorer.long_window) == (4, 40)
    assert state.scorer.min_spread == 0.1  # residuals in normalised units
    assert state.scorer.surprisal_cap == DetectorConfig().surprisal_cap == 15.0
    assert (state.incidents.warmup_events, state.incidents.cooldown_events) == (5, 10)
    assert state.drift.min_instances == 5  # no drift before alerts start
    assert [c.horizon for c in state.conformal] == [2, 2]
    assert state.conformal[0].alpha == DetectorConfig().interval_alpha
    assert (state.window.length, state.window.gap_policy) == (8, GapPolicy.INTERPOLATE)
    assert state.admission.readmit_after == ModelGroup(name="g").training.level_shift_readmit_after
    detector = DetectorConfig()
    assert (state.novelty.bins, state.novelty.orders) == (
        detector.novelty_bins,
        detector.novelty_orders,
    )
    assert state.novelty.capacity == detector.novelty_capacity
    assert state.novelty.rest_events == detector.novelty_rest_events
    assert state.range_break is not None
    assert state.range_break.tolerance == detector.range_tolerance
    assert state.range_break.warmup == 5  # the detector's warm-up
