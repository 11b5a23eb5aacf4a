"""Calendar context: time of day and day of week from event timestamps, as model inputs in
window and stateful mode, training and inference alike."""

from __future__ import annotations

import asyncio
import calendar as std_calendar
import json
import math
import random

import numpy as np
import pytest

from vigil.models.calendar import NO_CALENDAR, calendar_features
from vigil.models.config import ModelConfig
from vigil.models.registry import stored_model_config
from vigil.records import Reading
from vigil.settings import ModelGroup
from vigil.stream.series_processor import SeriesProcessor
from vigil.stream.validation import InputEvent

MONDAY = std_calendar.timegm((2024, 1, 1, 0, 0, 0))  # 2024-01-01 was a Monday


def test_features_are_the_angles_of_the_day_and_week() -> None:
    assert calendar_features(MONDAY) == pytest.approx((0.0, 1.0, 0.0, 1.0), abs=1e-12)
    noon_wed = calendar_features(MONDAY + 2 * 86400 + 43200)
    assert noon_wed[:2] == pytest.approx((0.0, -1.0), abs=1e-12)  # half a day
    angle = 2 * math.pi * 2.5 / 7
    assert noon_wed[2:] == pytest.approx((math.sin(angle), math.cos(angle)), abs=1e-12)
    # a week later, the same
    assert calendar_features(MONDAY + 7 * 86400 + 3600) == pytest.approx(
        calendar_features(MONDAY + 3600), abs=1e-9
    )


def test_a_version_stored_before_the_calendar_setting_reads_as_without_it() -> None:
    old = json.dumps({"cell": "lstm", "input_size": 1, "hidden_size": 8, "num_layers": 1,
                      "dropout": 0.0, "window": 8, "horizon": 1, "residual": True})  # fmt: skip
    assert stored_model_config(old).calendar == "off"
    assert stored_model_config(ModelConfig().model_dump_json()).calendar == "auto"


class Recording:
    """Persistence forecasts; keeps every window it was given."""

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self.windows: list[np.ndarray] = []

    async def __call__(self, windows: np.ndarray) -> np.ndarray:
        self.windows.extend(windows)
        return np.repeat(windows[:, -1:, :1], self.horizon, axis=1)


def _events(stamps: list[float]) -> list[InputEvent]:
    return [
        InputEvent("k", Reading.model_validate({"timestamp": ts, "value": float(i % 7)}), "r", 0, i)
        for i, ts in enumerate(stamps)
    ]


def _run(calendar: str, stamps: list[float]) -> tuple[list[np.ndarray], list]:
    group = ModelGroup.model_validate(
        {"name": "g", "model": {"window": 6, "horizon": 2, "hidden_size": 4, "num_layers": 1,
                                "calendar": calendar}}
    )  # fmt: skip
    predictor = Recording(2)
    processor = SeriesProcessor(group, predictor, lambda: "v")
    out = asyncio.run(processor.process(_events(stamps), {}))
    return predictor.windows, out.examples


def test_regular_timestamps_feed_the_calendar_of_each_row() -> None:
    stamps = [MONDAY + 1800.0 * i for i in range(40)]  # half-hourly from Monday 00:00
    windows, examples = _run("auto", stamps)
    last = windows[-1]
    assert last.shape == (6, 5)
    for row, ts in zip(last, stamps[-6:], strict=True):
        np.testing.assert_allclose(row[1:], calendar_features(ts), atol=1e-6)
    # training pairs: windows with the calendar columns, targets with the values only
    assert examples and examples[-1].window.shape == (6, 5)
    assert examples[-1].target.shape == (2, 1)


def test_missing_steps_get_their_own_calendar() -> None:
    stamps = [MONDAY + 3600.0 * i for i in range(30)]
    del stamps[20:22]  # two missing hours: filled by the gap policy, with their own time
    windows, _ = _run("on", stamps)
    last = windows[-1]  # rows: hours 24 .. 29 of the day
    for row, hour in zip(last, range(24, 30), strict=True):
        np.testing.assert_allclose(row[1:], calendar_features(MONDAY + 3600.0 * hour), atol=1e-6)
    windows, _ = _run("on", stamps[:21])  # the window right after the gap: hours 15 .. 22 ...
    row_hours = [15, 16, 17, 18, 19, 22]  # ... except the two filled rows (20, 21) pushed in
    filled = windows[-1]
    np.testing.assert_allclose(filled[-1, 1:], calendar_features(MONDAY + 3600.0 * 22), atol=1e-6)
    np.testing.assert_allclose(filled[-2, 1:], calendar_features(MONDAY + 3600.0 * 21), atol=1e-6)
    np.testing.assert_allclose(filled[-3, 1:], calendar_features(MONDAY + 3600.0 * 20), atol=1e-6)
    assert len(row_hours) == 6


def test_auto_gives_no_context_to_irregular_keys_and_off_gives_no_columns() -> None:
    rng = random.Random(1)
    stamps, ts = [], float(MONDAY)
    for _ in range(60):
        ts += rng.uniform(5.0, 100.0)  # no steady pace
        stamps.append(ts)
    windows, _ = _run("auto", stamps)
    np.testing.assert_array_equal(windows[-1][:, 1:], np.tile(NO_CALENDAR, (6, 1)))
    windows, _ = _run("off", [MONDAY + 60.0 * i for i in range(20)])
    assert windows[-1].shape == (6, 1)


@pytest.mark.parametrize("inference", ["window", "stateful"])
def test_the_model_sees_the_calendar_in_both_inference_modes(inference: str) -> None:
    """The same values at other times of day get other forecasts (window and stateful mode):
    the calendar columns reach the network."""
    import torch

    from vigil.models.forecaster import build_forecaster
    from vigil.models.inference import InferenceEngine

    group = ModelGroup.model_validate(
        {"name": "g", "inference": inference,
         "model": {"window": 8, "horizon": 1, "hidden_size": 8, "num_layers": 1, "calendar": "on"}}
    )  # fmt: skip
    model = build_forecaster(group.model, seed=0)
    with torch.no_grad():
        model.head.weight.normal_()  # an untrained head is persistence: give it some weight
    engine = InferenceEngine(model, torch.device("cpu"))

    async def predict(windows: np.ndarray) -> np.ndarray:
        return engine.predict(windows)

    async def step(x, stored, windows):  # type: ignore[no-untyped-def]
        return engine.step_keys(x, stored, windows)

    def forecasts(offset: float) -> list[float]:
        processor = SeriesProcessor(group, predict, lambda: engine.version, step)
        stamps = [MONDAY + offset + 1800.0 * i for i in range(30)]
        states: dict = {}
        out = asyncio.run(processor.process(_events(stamps[:20]), states))
        out2 = asyncio.run(processor.process(_events(stamps)[20:], states))  # stateful: stored
        return [p.forecast[0] for p in out.predictions + out2.predictions]

    morning, evening = forecasts(6 * 3600.0), forecasts(18 * 3600.0)
    assert len(morning) == len(evening) == 30 - 8 + 1
    assert all(math.isfinite(v) for v in morning)
    assert morning != evening
