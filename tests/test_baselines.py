"""Baselines: the forecasts they promise, the detectors find outliers, state round-trips."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from vigil.models.baselines import (
    ForecastResidualDetector,
    Persistence,
    RiverHalfSpaceTrees,
    RiverLinearLags,
    SeasonalNaive,
)
from vigil.models.online import OnlineDetector, OnlineForecaster
from vigil.models.scoring import ResidualScorer

PHI = (1.2, -0.5)


def ar2_series(seed: int, count: int) -> list[float]:
    """y_t = 10 + 1.2 (y_{t-1} - 10) - 0.5 (y_{t-2} - 10) + N(0, 1): oscillating, stationary."""
    rng = random.Random(seed)
    values = [10.0, 10.0]
    for _ in range(count - 2):
        deviation = PHI[0] * (values[-1] - 10.0) + PHI[1] * (values[-2] - 10.0)
        values.append(10.0 + deviation + rng.gauss(0, 1))
    return values


def test_classes_meet_the_protocols() -> None:
    for forecaster in (Persistence(), SeasonalNaive(4), RiverLinearLags()):
        assert isinstance(forecaster, OnlineForecaster)
    for detector in (RiverHalfSpaceTrees(), ForecastResidualDetector(Persistence())):
        assert isinstance(detector, OnlineDetector)


def test_persistence_forecasts_last_value() -> None:
    model = Persistence(horizon=3)
    assert all(math.isnan(v) for v in model.predict_one())
    for value in (1.0, 5.0, -2.5):
        model.learn_one(value)
        assert model.predict_one() == [value] * 3
    model.learn_one(math.nan)
    assert model.predict_one() == [-2.5] * 3


def test_seasonal_naive_forecasts_one_period_back() -> None:
    model = SeasonalNaive(period=4, horizon=6)
    values = [float(v) for v in range(10, 20)]
    for i, value in enumerate(values):
        model.learn_one(value)
        seen = values[: i + 1]
        forecast = model.predict_one()
        if len(seen) < 4:
            assert all(math.isnan(v) for v in forecast)
            continue
        t = len(seen) - 1  # index of the newest value
        for step, predicted in enumerate(forecast, start=1):
            target = t + step
            back = target - 4 * math.ceil(step / 4)
            assert predicted == seen[back]
    model.learn_one(math.inf)  # missing: the last value is carried forward
    assert model.history[-1] == values[-1]


def test_river_linear_lags_learns_ar_series() -> None:
    series = ar2_series(0, 4000)
    model = RiverLinearLags(lags=4, horizon=2)
    one_step, two_step, persistence = [], [], []
    pending: float | None = None
    for t, value in enumerate(series):
        forecast = model.predict_one()
        if t > 3000:
            one_step.append(abs(forecast[0] - value))
            persistence.append(abs(series[t - 1] - value))
            assert pending is not None
            two_step.append(abs(pending - value))
        pending = forecast[1]
        model.learn_one(value)
    mae = sum(one_step) / len(one_step)
    noise_mae = math.sqrt(2 / math.pi)  # the best any forecaster can do
    assert mae < 1.1 * noise_mae
    assert mae < 0.9 * sum(persistence) / len(persistence)
    # two steps ahead the noise compounds: sd = sqrt(1 + phi_1^2)
    assert sum(two_step) / len(two_step) < 1.12 * noise_mae * math.sqrt(1 + PHI[0] ** 2)


def test_river_linear_lags_skips_missing_values() -> None:
    model = RiverLinearLags(lags=2)
    for value in [1.0, 2.0, math.nan, 3.0]:
        model.learn_one(value)
    assert list(model.history) == [2.0, 2.0, 3.0]  # lags + horizon kept; the gap carried
    assert model.count == 3 and all(math.isfinite(v) for v in model.predict_one())


def seasonal_noise(seed: int, count: int) -> list[float]:
    rng = random.Random(seed)
    return [math.sin(t / 8.0) + rng.gauss(0.0, 0.1) for t in range(count)]


def test_half_space_trees_score_outlier_above_typical_points() -> None:
    detector = RiverHalfSpaceTrees(window=4, mass_window=250, seed=0)
    scores = [detector.score_one(value) for value in seasonal_noise(1, 1500)]
    assert all(0.0 <= s <= 1.0 for s in scores)
    typical = scores[1000:]
    outlier = detector.score_one(3.0)
    assert outlier > sorted(typical)[int(0.99 * len(typical))]


def test_forecast_residual_detector_flags_spike() -> None:
    detector = ForecastResidualDetector(RiverLinearLags(lags=4), ResidualScorer())
    scores = [detector.score_one(value) for value in ar2_series(2, 1500)]
    settled = scores[300:]
    assert sum(s > 0.99 for s in settled) / len(settled) < 0.03
    assert detector.score_one(25.0) > 0.99
    assert detector.last_result is not None and detector.last_result.raw > 0.99
    assert 0.0 <= detector.score_one(math.nan) <= 1.0


def roundtrip(obj: Any) -> Any:
    return type(obj).from_dict(json.loads(json.dumps(obj.to_dict(), allow_nan=False)))


FORECASTER_FACTORIES = [
    lambda: Persistence(horizon=2),
    lambda: SeasonalNaive(period=7, horizon=3),
    lambda: RiverLinearLags(lags=5, horizon=3),
]


@pytest.mark.parametrize("factory", FORECASTER_FACTORIES)
@pytest.mark.parametrize("split", [0, 3, 400])
def test_forecaster_roundtrip(factory: Any, split: int) -> None:
    series = ar2_series(3, 800)
    series[500] = math.nan
    original = factory()
    for value in series[:split]:
        original.learn_one(value)
    restored = roundtrip(original)
    for value in series[split:]:
        assert restored.predict_one() == pytest.approx(original.predict_one(), nan_ok=True, abs=0)
        restored.learn_one(value)
        original.learn_one(value)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: RiverHalfSpaceTrees(window=3, n_trees=5, height=5, mass_window=50),
        lambda: ForecastResidualDetector(SeasonalNaive(8), ResidualScorer(5, 50)),
        lambda: ForecastResidualDetector(RiverLinearLags(3), ResidualScorer()),
    ],
)
@pytest.mark.parametrize("split", [0, 2, 120, 600])
def test_detector_roundtrip(factory: Any, split: int) -> None:
    series = seasonal_noise(4, 900)
    series[130] = 10.0
    series[700] = math.nan
    original = factory()
    for value in series[:split]:
        original.score_one(value)
    restored = roundtrip(original)
    for value in series[split:]:
        assert restored.score_one(value) == original.score_one(value)


def test_forecast_residual_detector_refuses_unknown_forecaster() -> None:
    class Zero:
        horizon = 1

        def predict_one(self) -> list[float]:
            return [0.0]

        def learn_one(self, value: float) -> None:
            pass

    detector = ForecastResidualDetector(Zero())
    assert detector.score_one(1.0) >= 0.0
    with pytest.raises(TypeError, match="Zero"):
        detector.to_dict()
