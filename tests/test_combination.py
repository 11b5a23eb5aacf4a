"""The forecast combination with persistence: weights fitted online from recent errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from vigil.models import state_codec
from vigil.models.combination import MIN_UPDATES, PersistenceCombination
from vigil.records import Reading
from vigil.settings import ModelGroup
from vigil.stream.series_processor import SeriesProcessor
from vigil.stream.validation import InputEvent


def _run(values: np.ndarray, forecast_of: object, horizon: int = 2) -> PersistenceCombination:
    combination = PersistenceCombination(horizon, 1)
    for t in range(values.size - horizon):
        combination.observe([values[t]])
        combination.combine(forecast_of(t), [values[t]])  # type: ignore[operator]
    return combination


def test_the_weight_goes_to_persistence_on_a_random_walk() -> None:
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(size=3000))
    # a network that "learned" noise: its predicted change carries no information
    combination = _run(walk, lambda t: walk[t] + rng.normal(0, 0.5, (2, 1)))
    assert np.all(combination.weights() < 0.1)


def test_the_weight_goes_to_the_model_on_a_learnable_series() -> None:
    rng = np.random.default_rng(1)
    wave = 3 * np.sin(np.arange(3000) / 5)
    combination = _run(
        wave, lambda t: np.array([[wave[t + 1]], [wave[t + 2]]]) + rng.normal(0, 0.05, (2, 1))
    )
    assert np.all(combination.weights() > 0.9)


def test_published_forecast_is_between_persistence_and_the_model() -> None:
    combination = PersistenceCombination(1, 1)
    assert combination.combine(np.array([[2.0]]), [1.0]) == pytest.approx(2.0)  # w = 1 at first
    for _ in range(MIN_UPDATES + 5):  # the network always predicts +1, nothing ever changes
        combination.observe([0.0])
        combination.combine(np.array([[1.0]]), [0.0])
    assert combination.weights()[0, 0] == 0.0
    assert combination.combine(np.array([[1.0]]), [0.0])[0, 0] == 0.0


def test_each_step_learns_from_the_forecast_made_that_many_events_before() -> None:
    """Step 2 is judged on the forecast made two events earlier, across warming events and gap
    steps alike; step 1's forecasts are perfect here, step 2's are pure noise."""
    rng = np.random.default_rng(2)
    values = np.cumsum(rng.normal(size=2000))
    combination = PersistenceCombination(2, 1)
    for t in range(values.size - 2):
        if t % 50 == 7:
            combination.observe([values[t]])  # a warming event: no forecast
            continue
        combination.observe([values[t]])
        noise = rng.normal(0, 1.0)
        combination.combine(np.array([[values[t + 1]], [values[t] + noise]]), [values[t]])
    weights = combination.weights()
    assert weights[0, 0] > 0.95 and weights[1, 0] < 0.1
    restored = state_codec.decode(state_codec.encode(combination), PersistenceCombination)
    np.testing.assert_array_equal(restored.weights(), weights)
    restored.observe([1.0], skipped=1)  # a gap step before this event shifts the slots too
    assert restored.pending == 2  # this event's slot and the gap step's, both empty: the older
    assert not any(slot[0] for slot in restored._made)  # forecasts met their last target


def test_the_stream_publishes_the_combined_forecast() -> None:
    """A network that adds noise on a random walk: the stream's published forecast moves to
    persistence, and its intervals stay calibrated."""
    rng = np.random.default_rng(3)
    walk = 100 + np.cumsum(rng.normal(size=900))

    async def noisy(windows: np.ndarray) -> np.ndarray:
        return windows[:, -1:, :1] + rng.normal(0, 1.0, (len(windows), 1, 1))

    def run(combine: str) -> tuple[float, float]:
        group = ModelGroup.model_validate(
            {"name": "g", "model": {"window": 4, "hidden_size": 4, "num_layers": 1,
                                     "calendar": "off", "combine": combine}}
        )  # fmt: skip
        processor = SeriesProcessor(group, noisy, lambda: "v")
        events = [
            InputEvent("k", Reading.model_validate({"timestamp": 60.0 * i, "value": v}), "r", 0, i)
            for i, v in enumerate(walk.tolist())
        ]
        out = asyncio.run(processor.process(events, {}))
        forecasts = {round(p.timestamp / 60): p for p in out.predictions}
        errors, inside = [], []
        for i in range(300, walk.size - 1):
            p = forecasts[i]
            errors.append(p.forecast[0] - walk[i + 1])
            inside.append(p.lower[0] <= walk[i + 1] <= p.upper[0])
        return float(np.sqrt(np.mean(np.square(errors)))), float(np.mean(inside))

    persistence = float(np.sqrt(np.mean(np.diff(walk)[300:] ** 2)))
    raw_rmse, _ = run("off")
    combined_rmse, coverage = run("persistence")
    assert combined_rmse < raw_rmse
    assert combined_rmse < 1.05 * persistence
    assert 0.8 < coverage < 0.97
