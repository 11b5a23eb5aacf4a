"""Online forecast evaluation: metrics against numpy by hand, no look-ahead, persistence on a
random walk, intervals, season detection, and the `vigil eval forecast` command."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from vigil.bench.detectors import ForecastSetup, forecaster_factories, register_forecaster
from vigil.bench.eval_cli import app
from vigil.bench.forecast_eval import (
    ForecastMetrics,
    ForecastTrace,
    SeriesEvaluation,
    align_to_rows,
    build_forecasters,
    detect_season,
    evaluate_series,
    forecast_metrics,
    read_series_file,
    run_online,
    summarise,
)
from vigil.models.baselines import Persistence, RiverLinearLags
from vigil.settings import ModelGroup


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


# ---- issue #13 item 5: summary, workers, delimiter, messy rows, group config, gaps ----------
SMALL_GROUP = {
    "name": "forecast-test",
    "model": {"window": 8, "hidden_size": 8, "num_layers": 1},
    "training": {
        "min_examples": 24,
        "holdout_size": 8,
        "batch_size": 8,
        "steps_per_round": 3,
        "replay_capacity": 128,
    },
}


def _scored(name: str, rmse: dict[str, float | None], coverage: float | None) -> SeriesEvaluation:
    """A series whose step-1 RMSE per model is given; only ``model`` has an interval."""
    metrics = {
        model: {
            1: ForecastMetrics(
                10, value, 0.0, None, None, None, coverage if model == "model" else None
            )
        }
        for model, value in rmse.items()
    }
    return SeriesEvaluation(name, np.zeros(10), 1, None, {}, metrics)


def test_summary_across_series_by_hand() -> None:
    evaluations = [
        _scored("a", {"persistence": 2.0, "model": 1.0}, 0.8),  # ratio 0.5
        _scored("b", {"persistence": 1.0, "model": 2.0}, 0.9),  # ratio 2.0
        _scored("c", {"persistence": 4.0, "model": 3.0}, 1.0),  # ratio 0.75
        _scored("d", {"persistence": None, "model": 3.0}, None),  # no ratio: persistence unscored
    ]
    summary = summarise(evaluations)
    assert set(summary) == {"model"}  # persistence has no interval: not listed
    step = summary["model"]["step_1"]
    assert step["series"] == 3
    assert step["rmse_ratio_mean"] == pytest.approx((0.5 + 2.0 + 0.75) / 3)
    assert step["rmse_ratio_median"] == pytest.approx(0.75)
    assert step["beats_baseline"] == pytest.approx(2 / 3)
    assert step["coverage_mean"] == pytest.approx(0.9)
    assert step["coverage_median"] == pytest.approx(0.9)
    assert step["coverage_series"] == 3


class StepEncoder:
    """A grid forecaster whose forecast at row t of grid step g is 100 t + g; it moves
    ``steps[r]`` grid steps with row r."""

    def __init__(self, steps: list[int], horizon: int) -> None:
        self.horizon = horizon
        self.steps = steps
        self.grid_steps: list[int] = []
        self.rejected: dict[int, str] = {}

    def predict_one(self) -> list[float]:
        t = len(self.grid_steps)
        return [100.0 * t + g for g in range(1, self.horizon + 1)]

    def learn_one(self, value: float) -> None:
        index = len(self.grid_steps)
        self.grid_steps.append(self.steps[index])
        if self.steps[index] == 0:
            self.rejected[index] = "duplicate"


def test_grid_forecasts_are_matched_to_the_rows_they_cover() -> None:
    # rows 0..5; row 3 comes after two missing steps, row 5 was rejected
    steps = [1, 1, 1, 3, 1, 0]
    trace = run_online(StepEncoder(steps, 3), np.arange(6.0), horizon=3)
    f = trace.forecasts
    # made after row 0: row 1 is 1 step ahead, row 2 is 2, row 3 is 5 (beyond the horizon)
    assert f[1, :2].tolist() == [101.0, 102.0] and math.isnan(f[1, 2])
    # made after row 2: row 3 is 3 grid steps ahead, row 4 is 4
    assert f[3, 0] == 303.0 and math.isnan(f[3, 1])
    # made after row 3: row 4 is 1 step ahead; row 5 was rejected: nothing covers it
    assert f[4, 0] == 401.0 and math.isnan(f[4, 1]) and math.isnan(f[5, 0])
    assert align_to_rows(ForecastTrace(np.zeros((2, 1)), None, None), [1, 1]).lower is None


def test_scaled_river_baseline_stays_near_persistence_on_a_high_level_random_walk() -> None:
    """Before its inputs were scaled, the baseline's RMSE was 2502 times persistence's on seed 1."""
    for seed in range(3):
        walk = 1e4 + np.cumsum(np.random.default_rng(seed).normal(0.1, 1.0, 1500))
        models = {"persistence": Persistence(5), "river": RiverLinearLags(horizon=5)}
        evaluation = evaluate_series("walk", walk, models, 5)
        for k in (1, 5):
            river = evaluation.metrics["river"][k].rmse
            persistence = evaluation.metrics["persistence"][k].rmse
            assert river is not None and persistence is not None
            assert river / persistence < 1.1


def _weekdays(weeks: int) -> list[str]:
    """Daily dates, Monday to Friday only: a weekend gap before every Monday but the first."""
    days = np.arange(np.datetime64("2024-01-01"), np.datetime64("2024-01-01") + 7 * weeks)
    return [str(d) for d in days if d.astype("datetime64[D]").view("int64") % 7 not in (2, 3)]


def test_vigil_reports_weekend_gap_fills_and_forecasts_the_file_rows() -> None:
    dates = _weekdays(12)
    assert dates[0] == "2024-01-01" and "2024-01-06" not in dates  # a Monday; no Saturdays
    values = 50 + np.cumsum(np.random.default_rng(5).normal(size=len(dates)))
    seconds = np.array(dates, dtype="datetime64[us]").astype(np.int64) / 1e6
    setup = ForecastSetup(1, None, ModelGroup.model_validate(SMALL_GROUP), seed=0)
    models = build_forecasters(setup, ["vigil", "persistence"])
    evaluation = evaluate_series("weekdays", values, models, 1, timestamps=seconds)
    stream = evaluation.stream["vigil"]
    mondays = 11
    assert stream.gaps == mondays and stream.filled == 2 * mondays
    assert stream.beyond_horizon == {1: mondays}  # Friday's forecast is for Saturday
    assert evaluation.to_dict()["stream"]["vigil"]["filled"] == 2 * mondays
    # the Mondays are left out for every model; the rows after warm-up otherwise all scored
    scored = evaluation.metrics["persistence"][1].n
    assert scored == evaluation.metrics["vigil"][1].n
    assert scored <= len(dates) - 1 - mondays


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _run(args: list[str]) -> tuple[int, dict[str, Any], str]:
    result = CliRunner().invoke(app, ["forecast", *args, "--json", "--no-progress"])
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "{}"
    payload = json.loads(last) if result.exit_code == 0 else {}
    return result.exit_code, payload, result.output


def test_semicolon_file_with_messy_rows_is_read_and_reported(tmp_path: Path) -> None:
    rows = [
        "date;close",
        "2024-01-05;4",  # out of order: sorted in
        "2024-01-01;1",
        "2024-01-02;2",
        "2024-01-02;99",  # duplicate time: dropped, the first kept
        "2024-01-03;",  # empty: missing
        "2024-01-04;abc",  # not a number: missing
        "not a date;7",  # unreadable time: dropped
        "2024-01-08;inf",  # non-finite: missing
        *[f"2024-02-{d:02d};{d}" for d in range(1, 21)],
    ]
    path = _write(tmp_path / "semi.csv", "\n".join(rows) + "\n")
    series = read_series_file(path, "close", ";")
    assert series.values[:5].tolist()[:2] == [1.0, 2.0] and series.values[4] == 4.0
    assert series.rows.to_dict() == {
        "read": 28,
        "kept": 26,
        "empty_value": 1,
        "unreadable_value": 1,
        "non_finite_value": 1,
        "bad_timestamp": 1,
        "duplicate_timestamp": 1,
        "out_of_order": 1,
    }
    code, payload, output = _run(
        [str(path), "--column", "close", "--delimiter", ";", "--horizon", "1",
         "--models", "persistence,river-linear-lags"]
    )  # fmt: skip
    assert code == 0, output
    assert payload["files"][str(path)]["rows"]["kept"] == 26
    assert payload["summary"]["river-linear-lags"]["step_1"]["series"] == 1
    code, _, output = _run([str(path), "--column", "close"])  # the default ',' finds no column
    assert code == 2 and "no column 'close'" in output and "delimiter" in output


def _two_series(tmp_path: Path) -> list[str]:
    paths = []
    for seed, hours in ((1, 150), (2, 120)):
        stamps = np.datetime64("2024-01-01T00:00") + np.arange(hours) * np.timedelta64(1, "h")
        stamps = np.delete(stamps, [40, 41, 42])  # a 4-hour hole: 3 steps filled
        values = 10 + np.cumsum(np.random.default_rng(seed).normal(size=stamps.size))
        lines = ["timestamp,value"] + [f"{s},{v:.4f}" for s, v in zip(stamps, values, strict=True)]
        paths.append(str(_write(tmp_path / f"s{seed}.csv", "\n".join(lines) + "\n")))
    return paths


def test_workers_two_give_the_same_results_as_one(tmp_path: Path) -> None:
    config = _write(tmp_path / "group.json", json.dumps(SMALL_GROUP))
    args = [*_two_series(tmp_path), "--horizon", "2", "--group-config", str(config), "--seed", "3",
            "--models", "vigil,persistence,river-linear-lags"]  # fmt: skip
    code1, one, output = _run([*args, "--workers", "1"])
    assert code1 == 0, output
    code2, two, output = _run([*args, "--workers", "2"])
    assert code2 == 0, output
    assert one["files"] == two["files"] and one["summary"] == two["summary"]
    assert list(one["files"]) == args[:2]  # the order of the command line
    for series in one["files"].values():
        assert series["stream"]["vigil"]["gaps"] == 1 and series["stream"]["vigil"]["filled"] == 3
    assert one["group"]["model"]["window"] == 8 and one["group"]["model"]["horizon"] == 2
    assert one["seed"] == 3 and set(one["summary"]) == {"vigil", "river-linear-lags"}


def test_group_config_is_validated(tmp_path: Path) -> None:
    data = _two_series(tmp_path)[:1]
    fine = _write(tmp_path / "fine.json", json.dumps([{**SMALL_GROUP, "model": {"window": 8}}]))
    code, payload, output = _run([*data, "--group-config", str(fine), "--models", "persistence"])
    assert code == 0, output
    assert payload["horizon"] == 5 and payload["group"]["model"]["horizon"] == 5  # the default

    bad_field = _write(tmp_path / "bad.json", json.dumps({"name": "g", "model": {"window": 0}}))
    unknown = _write(tmp_path / "unknown.json", json.dumps({"name": "g", "modle": {}}))
    two_ways = _write(tmp_path / "h.json", json.dumps({"name": "g", "model": {"horizon": 3}}))
    not_json = _write(tmp_path / "x.json", "{name: g")
    multi = _write(tmp_path / "multi.json", json.dumps({**SMALL_GROUP, "channels": ["a", "b"]}))
    for path, args, problem in (
        (bad_field, [], "model.window"),
        (unknown, [], "modle"),
        (two_ways, ["--horizon", "5"], "model.horizon is 3 but --horizon is 5"),
        (not_json, [], "not JSON"),
        (multi, [], "channels"),
        (tmp_path / "absent.json", [], "group config not found"),
    ):
        code, _, output = _run([*data, "--group-config", str(path), *args])
        assert code == 2, (path, output)
        assert output.startswith("error: ") and problem in output, output
