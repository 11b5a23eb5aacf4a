"""The replay harness runs the stream's own SeriesProcessor without Kafka: no look-ahead, the same
outputs as the processor, training that learns, and Vigil's detector and forecaster in the
evaluations."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vigil.bench.detectors import ForecastSetup, detector_factories, forecaster_factories
from vigil.bench.eval_cli import app
from vigil.bench.forecast_eval import evaluate_series
from vigil.bench.nab.corpus import read_result_series, read_windows
from vigil.bench.nab.runner import detect_series, run_corpus
from vigil.bench.replay_harness import ReplayHarness, VigilDetector, VigilForecaster
from vigil.models.baselines import Persistence
from vigil.models.forecaster import build_forecaster
from vigil.models.inference import InferenceEngine
from vigil.settings import ModelGroup
from vigil.stream.series_processor import SeriesProcessor


def small_group(**training: object) -> ModelGroup:
    """A group small enough to train in seconds; rounds start after a few dozen examples."""
    return ModelGroup.model_validate(
        {
            "name": "replay-test",
            "model": {"window": 16, "hidden_size": 16, "num_layers": 1, "horizon": 2},
            "training": {
                "min_examples": 48,
                "holdout_size": 16,
                "batch_size": 16,
                "steps_per_round": 5,
                "replay_capacity": 256,
                "promote_margin": 0.0,
                **training,
            },
            "detector": {"warmup_events": 20, "long_window": 100},
        }
    )


def seasonal(n: int, seed: int = 0, period: int = 12, noise: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 10.0 + 3.0 * np.sin(2 * np.pi * t / period) + noise * rng.normal(size=n)


def stamps(n: int, step: float = 60.0) -> np.ndarray:
    return 1.7e9 + step * np.arange(n)


def outputs_through(result: object, row: int) -> list[np.ndarray]:
    return [
        np.asarray(getattr(result, name))[: row + 1]
        for name in ("scores", "anomaly", "forecasts", "lower", "upper")
    ]


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("row", [150, 255, 256, 400])  # mid-chunk and both sides of a boundary
def test_a_row_s_outputs_do_not_depend_on_later_rows(train: bool, row: int) -> None:
    n = 700
    values = seasonal(n)
    changed = values.copy()
    changed[row + 1 :] = np.random.default_rng(99).normal(50.0, 20.0, size=n - row - 1)
    first = ReplayHarness(small_group(), train=train).replay(stamps(n), values)
    second = ReplayHarness(small_group(), train=train).replay(stamps(n), changed)
    if train:
        assert first.training.rounds > 5  # training really happened before and after `row`
    assert np.isfinite(first.scores[row]) and np.isfinite(first.forecasts[row]).all()
    assert_same(outputs_through(first, row), outputs_through(second, row))
    later = slice(row + 2, None)
    assert not np.array_equal(first.scores[later], second.scores[later])  # the change was seen


def test_outputs_are_what_the_series_processor_publishes() -> None:
    """Same model, same events, same chunks: the harness maps the processor's records to rows."""
    group = small_group()
    n = 300
    values = seasonal(n, seed=1)
    values[[40, 41]] = np.nan  # missing values travel as null
    times = stamps(n)
    times[120] = times[119]  # a duplicate timestamp: rejected by the processor
    harness = ReplayHarness(group, train=False, chunk_size=64)
    result = harness.replay(times, values)

    engine = InferenceEngine(build_forecaster(group.model, 0), harness.device)

    async def predict(windows: np.ndarray) -> np.ndarray:
        return engine.predict(windows)

    processor = SeriesProcessor(group, predict, lambda: engine.version)
    events = ReplayHarness(group, train=False).events(times, values)
    states: dict = {}
    published: dict[int, object] = {}
    rejected: dict[int, str] = {}
    for start in range(0, n, 64):
        output = asyncio.run(processor.process(events[start : start + 64], states))
        published.update({p.provenance.offset: p for p in output.predictions})
        rejected.update({e.offset: r.code for e, r in output.rejected})

    assert rejected == {120: "duplicate"} == result.rejected
    assert set(published) == set(np.flatnonzero(np.isfinite(result.scores)).tolist())
    first_prediction = group.model.window - 1  # the row that fills the window
    assert len(published) == n - first_prediction - 1  # minus warm-up rows and the rejected one
    for row, prediction in published.items():
        assert result.scores[row] == prediction.score  # type: ignore[attr-defined]
        assert result.anomaly[row] == prediction.anomaly  # type: ignore[attr-defined]
        assert result.forecasts[row].tolist() == prediction.forecast  # type: ignore[attr-defined]
        assert result.lower[row].tolist() == prediction.lower  # type: ignore[attr-defined]
        assert result.upper[row].tolist() == prediction.upper  # type: ignore[attr-defined]


def test_chunk_size_does_not_change_outputs_without_training() -> None:
    """Many events of one key in one process() call give what one event per call gives."""
    n = 200
    values = seasonal(n, seed=2)
    one = ReplayHarness(small_group(), train=False, chunk_size=1).replay(stamps(n), values)
    many = ReplayHarness(small_group(), train=False, chunk_size=128).replay(stamps(n), values)
    assert_same(outputs_through(one, n - 1), outputs_through(many, n - 1))


def test_training_on_a_learnable_series_lowers_the_error() -> None:
    n = 1500
    values = seasonal(n, seed=3, noise=0.05)
    errors = {}
    for train in (False, True):
        harness = ReplayHarness(small_group(), train=train)
        result = harness.replay(stamps(n), values)
        late = np.arange(2 * n // 3, n - 1)
        errors[train] = float(np.sqrt(np.mean((result.forecasts[late, 0] - values[late + 1]) ** 2)))
        if train:
            assert result.training.promotions >= 3
            assert len(set(result.versions)) > 2  # promoted models served later chunks
    assert errors[True] < 0.5 * errors[False]
    assert errors[True] < 0.6 * float(np.std(values))


def test_vigil_detector_and_forecaster_are_registered() -> None:
    assert isinstance(detector_factories["vigil"](), VigilDetector)
    forecaster = forecaster_factories["vigil"](ForecastSetup(horizon=3))
    assert isinstance(forecaster, VigilForecaster) and forecaster.horizon == 3


def test_detect_series_uses_the_batch_path_and_checks_it() -> None:
    class Batch:
        def __init__(self, scores: list[float]) -> None:
            self.scores = scores
            self.seen: np.ndarray | None = None

        def score_series(self, timestamps: np.ndarray, values: np.ndarray) -> list[float]:
            self.seen = timestamps
            return self.scores

    times = np.array(["2020-01-01T00:00", "2020-01-01T00:05"], dtype="datetime64[us]")
    good = Batch([0.25, 1.0])
    assert detect_series(good, [1.0, 2.0], "b", times).tolist() == [0.25, 1.0]
    assert good.seen is not None and good.seen.tolist() == [1577836800.0, 1577837100.0]
    with pytest.raises(ValueError, match="2 values"):
        detect_series(Batch([0.5]), [1.0, 2.0], "b", times)
    with pytest.raises(ValueError, match="row 1"):
        detect_series(Batch([0.5, math.nan]), [1.0, 2.0], "b", times)


def test_vigil_detector_one_value_at_a_time_matches_the_batch_path() -> None:
    n = 150
    values = seasonal(n, seed=4)
    batch = VigilDetector(small_group(), train=False).score_series(
        np.arange(n, dtype=float), values
    )
    single = VigilDetector(small_group(), train=False)
    one_by_one = [single.score_one(v) for v in values]
    assert one_by_one == batch
    assert all(0.0 <= s <= 1.0 for s in batch) and max(batch) > 0.0


def test_vigil_runs_through_the_nab_runner_on_a_real_file(
    shared_data: Path, tmp_path: Path
) -> None:
    relative = "realTraffic/speed_7578.csv"  # 1127 rows, 4 labelled windows
    data = tmp_path / "data" / relative
    data.parent.mkdir(parents=True)
    data.write_text((shared_data / "nab" / "data" / relative).read_text())
    labels = shared_data / "nab" / "labels" / "combined_windows.json"
    windows = read_windows(labels)
    run = run_corpus(
        "vigil", tmp_path / "data", windows, tmp_path / "out", workers=1, progress=False
    )
    assert [f.relative_path for f in run.files] == [relative] and run.rows == 1127
    scores = run.files[0].anomaly_scores
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores[0] == 0.0 and scores.max() > 0.99  # nothing published before the window fills
    written = read_result_series(
        tmp_path / "out" / "vigil" / "realTraffic" / "vigil_speed_7578.csv", relative
    )
    np.testing.assert_array_equal(written.anomaly_scores, scores)

    args = ["nab", "--data", str(tmp_path / "data"), "--labels", str(labels)]
    args += ["--out", str(tmp_path / "cli"), "--workers", "1", "--no-progress", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["detector"] == "vigil" and payload["rows"] == 1127
    assert set(payload["scores"]) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}


def test_vigil_scores_a_real_file_with_repeated_and_out_of_order_rows(
    shared_data: Path, tmp_path: Path
) -> None:
    """Rows stay in file order; each gets what the stream publishes for it: a repeated or late
    row is dead-lettered and scores 0; rows out of order within one batch are reordered by the
    processor and each keeps its own score. The file is scored with NAB's window matching."""
    relative = "realTraffic/speed_7578.csv"
    lines = (shared_data / "nab" / "data" / relative).read_text().splitlines()
    header, rows = lines[0], lines[1:]
    rows.insert(501, rows[500])  # a repeated timestamp (file rows 500 and 501)
    rows[600], rows[601] = rows[601], rows[600]  # out of order within one batch of 256
    late = rows.pop(300)
    rows.insert(700, late)  # 400 rows late: beyond the batch, so dead-lettered
    data = tmp_path / "data" / relative
    data.parent.mkdir(parents=True)
    data.write_text("\n".join([header, *rows]) + "\n")
    labels = shared_data / "nab" / "labels" / "combined_windows.json"
    run = run_corpus(
        "vigil",
        tmp_path / "data",
        read_windows(labels),
        tmp_path / "out",
        workers=1,
        progress=False,
    )
    scores = run.files[0].anomaly_scores
    assert run.rows == len(rows) == 1128
    stamps_s = np.array([r.split(",")[0] for r in rows], dtype="datetime64[us]")
    values = np.array([float(r.split(",")[1]) for r in rows])
    replay = ReplayHarness(detector_factories["vigil"]().harness.group).replay(
        stamps_s.astype(np.int64) / 1e6, values
    )
    # rows are numbered after the pop/insert: the repeat is row 499 + 1, the late row is 700
    assert replay.rejected == {500: "duplicate", 700: "late"}
    assert scores[500] == 0.0 and scores[700] == 0.0
    assert math.isfinite(replay.scores[599]) and math.isfinite(replay.scores[600])
    np.testing.assert_allclose(scores, np.nan_to_num(replay.scores), rtol=0, atol=1e-12)

    args = ["nab", "--data", str(tmp_path / "data"), "--labels", str(labels)]
    args += ["--out", str(tmp_path / "cli"), "--workers", "1", "--no-progress", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    scored = ["nab-score", "--results", str(tmp_path / "cli"), "--labels", str(labels)]
    scored += ["--detector", "vigil", "--json"]
    again = CliRunner().invoke(app, scored)
    assert again.exit_code == 0, again.output
    first = json.loads(result.stdout.strip().splitlines()[-1])
    second = json.loads(again.stdout.strip().splitlines()[-1])
    assert first["scores"] == second["scores"]


def test_vigil_forecaster_in_the_online_evaluation() -> None:
    n = 400
    values = seasonal(n, seed=5)
    forecaster = VigilForecaster(2, small_group())
    evaluation = evaluate_series(
        "s", values, {"vigil": forecaster, "persistence": Persistence(2)}, 2
    )
    trace = evaluation.traces["vigil"]
    window = small_group().model.window
    assert np.isnan(trace.forecasts[:window]).all()  # nothing until the window is full
    assert np.isfinite(trace.forecasts[window:]).all()
    assert trace.lower is not None and trace.upper is not None
    tail = slice(n // 2, None)
    assert (trace.lower[tail] <= trace.forecasts[tail]).all()
    assert (trace.forecasts[tail] <= trace.upper[tail]).all()
    metrics = evaluation.metrics["vigil"]
    assert metrics[1].nrmse is not None and metrics[1].nrmse < 1.0
    assert metrics[1].coverage is not None and metrics[1].coverage > 0.5
