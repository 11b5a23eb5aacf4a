"""Seasonal-lag inputs: detection per key, the lag columns in window and stateful mode, in
training examples as at inference, state round trips, and no look-ahead."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
import torch

from vigil.models import state_codec
from vigil.models.config import ModelConfig
from vigil.models.forecaster import build_forecaster
from vigil.models.registry import stored_model_config
from vigil.models.season import SeasonalLags, candidate_periods, detect_period
from vigil.records import Reading
from vigil.settings import ModelGroup
from vigil.stream.key_state import KeyState
from vigil.stream.series_processor import SeriesProcessor
from vigil.stream.validation import InputEvent

HALF_HOUR = 1800.0


def _daily(n: int, seed: int = 0) -> np.ndarray:
    """Half-hourly values with a daily cycle (48 events), weekday differences and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    weekly = 1.0 + 0.3 * ((t // 48) % 7 >= 5)
    return 10 + 5 * np.sin(2 * np.pi * t / 48) * weekly + rng.normal(0, 0.5, n)


# ---- detection -----------------------------------------------------------------------------
def test_candidates_are_a_day_and_a_week_in_the_keys_own_interval() -> None:
    assert candidate_periods(HALF_HOUR, 5) == [48, 336]
    assert candidate_periods(86_400.0, 1) == [7]  # daily data: a week (a day is one event)
    assert candidate_periods(60.0, 1) == []  # a day of minutes needs too long a history
    assert candidate_periods(0.0, 1) == []


def test_a_seasonal_series_is_detected_and_a_random_walk_is_not() -> None:
    assert detect_period(_daily(1008), [48, 336]) in (48, 336)
    assert detect_period(_daily(1008), [48]) == 48
    rng = np.random.default_rng(3)
    for _ in range(20):
        walk = np.cumsum(rng.normal(size=1008))
        assert detect_period(walk, [48, 336]) == 0
    trend = np.arange(1008.0) + rng.normal(0, 1, 1008)  # levels correlate, changes do not
    assert detect_period(trend, [48, 336]) == 0


def test_fixed_period_lags_are_the_changes_one_season_before_each_step() -> None:
    lags = SeasonalLags(horizon=3, channels=1, period=4)
    values = [float(t * t) for t in range(12)]
    rows = [lags.push([v]) for v in values]
    # row t: y[t+k-4] - y[t-4] for k = 1, 2, 3; unseen history reads 0
    assert rows[3] == [0.0, 0.0, 0.0]
    for t in (4, 11):
        assert rows[t] == [values[t + k - 4] - values[t - 4] for k in (1, 2, 3)]
    short = SeasonalLags(horizon=3, channels=1, period=2)  # step 3 reaches two seasons back
    rows = [short.push([v]) for v in values[:7]]
    assert rows[-1] == [values[5] - values[4], values[6] - values[4], values[5] - values[2]]
    filled = SeasonalLags(horizon=1, channels=1, period=2)
    rows = [filled.push([v]) for v in (1.0, None, 3.0, 5.0)]  # the gap row carries 1.0
    assert rows[2:] == [[0.0], [2.0]]  # y[1] - y[0] and y[2] - y[1]


def test_auto_decides_once_from_the_first_events_and_round_trips() -> None:
    values = _daily(1100)
    lags = SeasonalLags(horizon=2, channels=1)
    for i, value in enumerate(values):
        lags.push([value / 10], raw=value, interval=HALF_HOUR)
        if i == 500:  # undecided: the detection buffer travels with the state
            restored = state_codec.decode(state_codec.encode(lags), SeasonalLags)
            assert restored.season is None
    assert lags.season in (48, 336)
    restored = state_codec.decode(state_codec.encode(lags), SeasonalLags)
    assert restored.push([1.0]) == lags.push([1.0])
    walk = SeasonalLags(horizon=2, channels=1)
    for value in np.cumsum(np.random.default_rng(0).normal(size=1100)):
        walk.push([value], raw=value, interval=HALF_HOUR)
    assert walk.season == 0
    assert walk.push([1.0]) == [0.0, 0.0]  # no season: no context


def test_a_version_stored_before_the_setting_reads_as_without_the_inputs() -> None:
    old = ModelConfig(calendar="off").model_dump()
    del old["season_lag"]
    import json

    assert stored_model_config(json.dumps(old)).season_lag == "off"
    assert ModelConfig(season_lag=336).lag_features == 1
    assert ModelConfig(season_lag="auto", horizon=5, input_size=2).features == 2 + 4 + 10


def test_models_with_and_without_the_lag_inputs_read_each_others_rows() -> None:
    plain = build_forecaster(ModelConfig(window=4, horizon=2, hidden_size=4, num_layers=1), seed=0)
    with_lags = build_forecaster(
        ModelConfig(window=4, horizon=2, hidden_size=4, num_layers=1, season_lag=48), seed=0
    )
    with torch.no_grad():
        for model in (plain, with_lags):
            model.head.weight.normal_()
    rows = torch.randn(3, 4, 1 + 4 + 2)  # values, calendar, two lag columns
    # a model without the inputs ignores the lag columns
    torch.testing.assert_close(plain(rows), plain(rows[..., :5]))
    # a model with them reads absent lag columns (and an absent calendar) as zeros
    zeros = rows.clone()
    zeros[..., 5:] = 0
    torch.testing.assert_close(with_lags(rows[..., :5]), with_lags(zeros))
    no_calendar = zeros.clone()
    no_calendar[..., 1:5] = 0
    torch.testing.assert_close(with_lags(rows[..., :1]), with_lags(no_calendar))
    lags_only = torch.cat([rows[..., :1], rows[..., 5:]], dim=-1)  # values and lags, no calendar
    expected = rows.clone()
    expected[..., 1:5] = 0
    torch.testing.assert_close(with_lags(lags_only), with_lags(expected))
    with pytest.raises(ValueError, match="F="):
        with_lags(torch.randn(3, 4, 4))


# ---- in the stream -------------------------------------------------------------------------
def _group(inference: str = "window", season_lag: object = 4, **model: object) -> ModelGroup:
    return ModelGroup.model_validate(
        {"name": "g", "inference": inference,
         "model": {"window": 6, "horizon": 2, "hidden_size": 4, "num_layers": 1,
                   "calendar": "off", "season_lag": season_lag, **model}}
    )  # fmt: skip


def _events(
    values: np.ndarray | list[float], start: int = 0, interval: float = HALF_HOUR
) -> list[InputEvent]:
    return [
        InputEvent(
            "k", Reading.model_validate({"timestamp": interval * i, "value": float(v)}), "r", 0, i
        )
        for i, v in enumerate(values[start:], start)
    ]


class Recording:
    """A forecast that depends on every column (so the lags matter); keeps what it was given."""

    def __init__(self, horizon: int = 2) -> None:
        self.horizon = horizon
        self.windows: list[np.ndarray] = []
        self.steps: list[np.ndarray] = []

    async def predict(self, windows: np.ndarray) -> np.ndarray:
        self.windows.extend(windows)
        return np.repeat(windows.mean(axis=(1, 2))[:, None, None], self.horizon, axis=1)

    async def step(self, x, stored, windows):  # type: ignore[no-untyped-def]
        self.steps.extend(x)
        forecast = await self.predict(windows)
        return forecast, [b"s"] * len(x), "v"


def test_window_rows_carry_the_lags_and_training_examples_equal_inference_windows() -> None:
    recording = Recording()
    processor = SeriesProcessor(_group(), recording.predict, lambda: "v")
    out = asyncio.run(processor.process(_events(np.arange(30.0) % 5), {}))
    window = recording.windows[-1]
    assert window.shape == (6, 3)  # value, y[t+1-4], y[t+2-4]
    for t in range(4, 6):  # row t's lags: the value column 3 and 2 rows earlier, less 4 rows
        assert window[t, 1] == pytest.approx(window[t - 3, 0] - window[t - 4, 0], abs=1e-6)
        assert window[t, 2] == pytest.approx(window[t - 2, 0] - window[t - 4, 0], abs=1e-6)
    # the example cut when a target is complete is exactly an earlier inference window
    example = out.examples[-1]
    np.testing.assert_array_equal(example.window, recording.windows[-1 - 2])
    assert example.target.shape == (2, 1)


def test_stateful_steps_feed_the_lag_columns() -> None:
    recording = Recording()
    processor = SeriesProcessor(_group("stateful"), recording.predict, lambda: "v", recording.step)
    states: dict[str, KeyState] = {}
    values = np.arange(30.0) % 5
    asyncio.run(processor.process(_events(values[:20]), states))
    asyncio.run(processor.process(_events(values[:25], 20), states))
    assert recording.steps[-1].shape == (3,)
    np.testing.assert_array_equal(recording.steps[-1], recording.windows[-1][-1])
    assert np.any(np.asarray(recording.steps)[:, 1:] != 0)


def test_gap_rows_keep_the_ring_on_the_event_grid() -> None:
    recording = Recording()
    processor = SeriesProcessor(_group(), recording.predict, lambda: "v")
    events = _events(np.arange(24.0))
    del events[20]  # one missing step: its row carries the last value
    asyncio.run(processor.process(events, {}))
    window = recording.windows[-1]  # rows of events 18 .. 23, 20 filled with 19's value
    assert window[2, 0] == window[1, 0]
    assert window[5, 1] == 0.0  # row 23, step 1: y[20] - y[19], the filled row
    assert window[5, 2] == pytest.approx(
        window[3, 0] - window[1, 0], abs=1e-6
    )  # step 2: y[21] - y[19]
    assert window[4, 1] == pytest.approx(
        window[1, 0] - window[0, 0], abs=1e-6
    )  # row 22: y[19] - y[18]


def test_state_round_trip_and_no_look_ahead() -> None:
    """Auto detection with the forecast combination: a restored state continues exactly, and
    later values never change an earlier output."""
    group = _group(season_lag="auto", combine="persistence")
    rng = np.random.default_rng(0)
    hours = 3 * 3600.0  # a day is 8 events, a week 56: detected after 168
    t = np.arange(260)
    values = 10 + 5 * np.sin(2 * np.pi * t / 8) + rng.normal(0, 0.3, t.size)

    def run(split: int | None, end: int) -> list[float]:
        recording = Recording()
        processor = SeriesProcessor(group, recording.predict, lambda: "v")
        states: dict[str, KeyState] = {}
        first = asyncio.run(
            processor.process(_events(values[: split or end], interval=hours), states)
        )
        if split is None:
            return [p.forecast[-1] for p in first.predictions]
        restored = {"k": KeyState.from_dict(states["k"].to_dict())}
        second = asyncio.run(processor.process(_events(values[:end], split, hours), restored))
        assert restored["k"].season is not None and restored["k"].season.season in (8, 56)
        return [p.forecast[-1] for p in first.predictions + second.predictions]

    whole = run(None, 260)
    assert run(200, 260) == whole  # saved and restored after detection ...
    assert run(100, 260) == whole  # ... and before
    prefix = run(None, 230)
    assert prefix == whole[: len(prefix)]
    assert all(math.isfinite(v) for v in whole)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_seasonal_gain_is_the_same_in_window_and_stateful_mode(cell: str) -> None:
    """T steps from a zero state give the window pass's forecast, lag columns included; the
    lag columns of the newest row move the forecast through the gain, bypassing the cells."""
    config = ModelConfig(cell=cell, window=5, horizon=3, hidden_size=4, num_layers=1, season_lag=48)
    model = build_forecaster(config, seed=0)
    with torch.no_grad():
        model.season_gain.copy_(torch.tensor([[0.5], [1.0], [2.0]]))
    rows = torch.randn(2, 5, config.features)
    state = model.initial_state(2)
    for t in range(5):
        stepped, state = model.step(rows[:, t], state)
    torch.testing.assert_close(stepped, model(rows), atol=1e-5, rtol=1e-5)
    moved = rows.clone()
    moved[:, -1, -3:] += 1.0  # one more unit of last season's change at every step
    delta = (model(moved) - model(rows)).squeeze(-1)
    torch.testing.assert_close(delta, torch.tensor([[0.5, 1.0, 2.0]] * 2))


def test_a_gap_longer_than_the_window_keeps_the_ring_on_the_grid() -> None:
    recording = Recording()
    processor = SeriesProcessor(_group(), recording.predict, lambda: "v")
    events = _events(np.arange(40.0) ** 2)
    del events[20:30]  # ten missing steps, the window is six: four never reach it
    asyncio.run(processor.process(events, {}))
    window = recording.windows[-1]  # rows of events 34 .. 39
    assert window[5, 1] == pytest.approx(window[2, 0] - window[1, 0], abs=1e-6)
    assert window[5, 2] == pytest.approx(window[3, 0] - window[1, 0], abs=1e-6)
