"""Online forecast evaluation: metrics against numpy by hand, no look-ahead, persistence on a
random walk, intervals, season detection, and the `vigil eval forecast` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vigil.bench.detectors import ForecastSetup, forecaster_factories, register_forecaster
from vigil.bench.eval_cli import app
from vigil.bench.forecast_eval import (
    build_forecasters,
    detect_season,
    evaluate_series,
    forecast_metrics,
    run_online,
)


def test_metrics_match_numpy_by_hand() -> None:
    rng = np.random.default_rng(3)
    actual = rng.normal(10, 3, 200)
    actual[[5, 50]] = 0.0  # MAPE must skip these
    forecast = actual + rng.normal(0, 1, 200)
    previous = np.roll(actual, 1)
    previous[[7, 8]] = actual[[7, 8]]  # no movement there: left out of the direction count
    lower, upper = forecast - 1.5, forecast + 1.5

    m = forecast_metrics(forecast, actual, previous, lower, upper)

    error = forecast - actual
    nonzero = actual != 0
    moved = actual != previous
    assert m.n == 200
    assert m.rmse == pytest.approx(np.sqrt(np.mean(error**2)))
    assert m.mae == pytest.approx(np.mean(np.abs(error)))
    assert m.mape == pytest.approx(100 * np.mean(np.abs(error[nonzero] / actual[nonzero])))
    assert m.nrmse == pytest.approx(np.sqrt(np.mean(error**2)) / np.std(actual))
    same = np.sign(forecast - previous)[moved] == np.sign(actual - previous)[moved]
    assert m.directional_accuracy == pytest.approx(np.mean(same))
    assert m.coverage == pytest.approx(np.mean(np.abs(error) <= 1.5))
    assert m.mean_width == pytest.approx(3.0)


class RecordingForecaster:
    """Forecasts the last value it learned; remembers what it had seen at every forecast."""

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self.seen: list[float] = []
        self.seen_at_forecast: list[list[float]] = []

    def predict_one(self) -> list[float]:
        self.seen_at_forecast.append(list(self.seen))
        return [self.seen[-1] if self.seen else math.nan] * self.horizon

    def learn_one(self, value: float) -> None:
        self.seen.append(value)


def test_a_model_never_sees_a_value_before_forecasting_it() -> None:
    series = np.random.default_rng(0).normal(size=50)
    model = RecordingForecaster(horizon=3)
    trace = run_online(model, series, horizon=3)
    assert len(model.seen_at_forecast) == 50
    for t, seen in enumerate(model.seen_at_forecast):
        assert seen == series[:t].tolist()  # y[0..t-1] only, when forecasting y[t]
    # forecasts[t, h] targets y[t + h] and was made knowing y[t - 1] at most
    assert np.isnan(trace.forecasts[0]).all()
    np.testing.assert_array_equal(trace.forecasts[1:, 2], series[:-1])


def test_persistence_on_a_random_walk_is_scored_against_the_right_targets() -> None:
    """A look-ahead (learn, then predict) would make this error zero; off-by-one would change it."""
    walk = np.cumsum(np.random.default_rng(1).normal(size=2000))
    horizon = 4
    models = {
        "recording": RecordingForecaster(horizon),
        **build_forecasters(ForecastSetup(horizon), ["persistence"]),
    }
    evaluation = evaluate_series("walk", walk, models, horizon)
    for k in (1, horizon):
        origins = np.arange(1, walk.size - k + 1)
        expected = np.sqrt(np.mean((walk[origins + k - 1] - walk[origins - 1]) ** 2))
        for name in models:
            metrics = evaluation.metrics[name][k]
            assert metrics.n == origins.size
            assert metrics.rmse == pytest.approx(expected)
    # a k-step random-walk error has variance k: the 4-step RMSE is about twice the 1-step one
    four, one = evaluation.metrics["persistence"][4].rmse, evaluation.metrics["persistence"][1].rmse
    assert four is not None and one is not None
    assert four / one == pytest.approx(2.0, rel=0.15)
    assert evaluation.metrics["persistence"][1].directional_accuracy == 0.0


class IntervalForecaster(RecordingForecaster):
    """Persistence with a fixed +-1 band on the next step only."""

    def interval_one(self) -> tuple[float, float]:
        last = self.seen[-1] if self.seen else math.nan
        return last - 1.0, last + 1.0


def test_interval_coverage_and_width_for_models_that_give_intervals() -> None:
    walk = np.cumsum(np.random.default_rng(2).normal(size=3000))
    evaluation = evaluate_series("walk", walk, {"band": IntervalForecaster(2)}, horizon=2)
    step1 = evaluation.metrics["band"][1]
    steps = np.abs(np.diff(walk))
    assert step1.coverage == pytest.approx(np.mean(steps <= 1.0))
    assert step1.mean_width == pytest.approx(2.0)
    assert evaluation.metrics["band"][2].coverage is None  # a single pair bounds step 1 only


def test_all_models_are_scored_on_the_same_points() -> None:
    values = np.sin(np.arange(400) * 2 * np.pi / 24) * 10 + 50
    setup = ForecastSetup(horizon=2, season=24)
    evaluation = evaluate_series("sine", values, build_forecasters(setup), 2, 24)
    counts = {name: steps[1].n for name, steps in evaluation.metrics.items()}
    assert set(counts) >= {"persistence", "seasonal-naive", "river-linear-lags"}
    assert len(set(counts.values())) == 1 and counts["persistence"] <= 400 - 24
    # on a clean cycle the seasonal naive forecast is exact once it has seen a season
    assert evaluation.metrics["seasonal-naive"][2].rmse == pytest.approx(0.0, abs=1e-9)


def test_season_is_detected_from_the_start_of_the_series_only() -> None:
    rng = np.random.default_rng(4)
    t = np.arange(5000)
    daily = 10 * np.sin(2 * np.pi * t / 48) + rng.normal(0, 1, t.size)
    assert detect_season(daily) == 48
    assert detect_season(np.cumsum(rng.normal(size=5000))) is None
    assert detect_season(np.ones(100)) is None


def test_registering_a_forecaster_is_one_call() -> None:
    register_forecaster("test-recording", lambda setup: RecordingForecaster(setup.horizon))
    try:
        models = build_forecasters(ForecastSetup(horizon=3), ["test-recording"])
        assert isinstance(models["test-recording"], RecordingForecaster)
        with pytest.raises(ValueError, match="unknown forecaster"):
            build_forecasters(ForecastSetup(), ["no-such-model"])
    finally:
        forecaster_factories.pop("test-recording")


def test_forecast_command_prints_every_models_metrics_as_json(
    shared_data: Path, tmp_path: Path
) -> None:
    source = shared_data / "nab" / "data" / "realKnownCause" / "nyc_taxi.csv"
    lines = source.read_text().splitlines()
    sliced = tmp_path / "realKnownCause" / "nyc_taxi.csv"
    sliced.parent.mkdir()
    sliced.write_text("\n".join(lines[:1201]) + "\n")  # header + 1200 half-hours
    report = tmp_path / "report"
    args = [
        "forecast", str(sliced), "--horizon", "5", "--season", "48",
        "--labels", str(shared_data / "nab" / "labels" / "combined_windows.json"),
        "--report", str(report), "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["command"] == "forecast" and payload["horizon"] == 5
    assert payload["references"]["nyc_taxi_5_step_nrmse"]["persistence"] == 0.926
    series = payload["files"][str(sliced)]
    assert series["n"] == 1200 and series["season"] == 48
    assert set(series["models"]) >= {"persistence", "seasonal-naive", "river-linear-lags"}
    for model in series["models"].values():
        assert set(model) == {"step_1", "step_5"}
        for metrics in model.values():
            assert {"n", "rmse", "mae", "mape", "nrmse", "directional_accuracy", "coverage"} <= set(
                metrics
            )
            assert metrics["n"] > 1000 and metrics["nrmse"] > 0
    assert (report / "forecast.md").is_file() and list(report.glob("*.png"))


def test_forecast_command_rejects_a_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("timestamp,price\n2020-01-01,1\n2020-01-02,2\n")
    result = CliRunner().invoke(app, ["forecast", str(path), "--column", "value"])
    assert result.exit_code == 2
    assert "no column 'value'" in result.output
