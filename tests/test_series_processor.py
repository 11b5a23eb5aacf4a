"""The agents' logic without Kafka (pure): ordering, replays, gaps, scoring, training feed."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from vigil.records import Reading
from vigil.settings import DetectorConfig, ModelConfig, ModelGroup, TrainingConfig
from vigil.stream.key_state import KeyState
from vigil.stream.series_processor import SeriesProcessor
from vigil.stream.validation import InputEvent

WINDOW, HORIZON = 8, 2


class PersistencePredictor:
    """Forecasts the window's last value for every step (a fake: the maths under test is ours)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def __call__(self, windows: np.ndarray) -> np.ndarray:
        self.calls.append(len(windows))
        return np.repeat(windows[:, -1:, :], HORIZON, axis=1)


def group(**detector: float) -> ModelGroup:
    return ModelGroup(
        name="g",
        model=ModelConfig(hidden_size=4, num_layers=1, window=WINDOW, horizon=HORIZON),
        training=TrainingConfig(level_shift_readmit_after=1000),
        detector=DetectorConfig(warmup_events=20, cooldown_events=3, **detector),  # type: ignore[arg-type]
    )


def events(
    key: str, values: list[float | None], *, start: int = 0, step: float = 60.0, t0: float = 1e9
) -> list[InputEvent]:
    return [
        InputEvent(
            key,
            Reading.model_validate({"timestamp": t0 + step * (start + i), "value": v}),
            "r",
            0,
            start + i,
        )
        for i, v in enumerate(values)
    ]


def wave(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [10 + math.sin(i / 4) + rng.gauss(0, 0.1) for i in range(n)]


async def run(processor: SeriesProcessor, batch: list[InputEvent], states: dict[str, KeyState]):  # type: ignore[no-untyped-def]
    return await processor.process(batch, states)


async def test_one_forward_pass_serves_every_event_of_every_key_in_a_batch() -> None:
    predictor = PersistencePredictor()
    processor = SeriesProcessor(group(), predictor, lambda: "v1")
    batch = events("a", wave(30)) + events("b", wave(30, 1))
    out = await run(processor, batch, {})
    assert predictor.calls == [2 * (30 - WINDOW + 1)]
    assert len(out.predictions) == 2 * (30 - WINDOW + 1)
    assert all(p.provenance.model_version == "v1" for p in out.predictions)
    # a persistence forecast in raw units is the last observed value
    last = out.predictions[-1]
    assert last.forecast[0] == pytest.approx(last.observed, rel=1e-4)


async def test_a_shuffled_batch_gives_the_same_outputs_as_an_ordered_one() -> None:
    ordered = events("a", wave(40))
    shuffled = ordered[:]
    random.Random(3).shuffle(shuffled)
    a = await run(SeriesProcessor(group(), PersistencePredictor(), lambda: "v"), ordered, {})
    b = await run(SeriesProcessor(group(), PersistencePredictor(), lambda: "v"), shuffled, {})
    assert [p.model_dump() for p in a.predictions] == [p.model_dump() for p in b.predictions]
    assert not b.rejected


async def test_redelivered_events_are_skipped_and_duplicates_and_late_ones_rejected() -> None:
    processor = SeriesProcessor(group(), PersistencePredictor(), lambda: "v")
    states: dict[str, KeyState] = {}
    first = events("a", wave(20))
    await run(processor, first, states)
    again = await run(processor, first[-5:], states)  # a restart redelivers these
    assert again.outcomes["replayed"] == 5 and not again.predictions and not again.rejected
    dup = InputEvent("a", first[-1].reading, "r", 0, 100)
    late = InputEvent(
        "a", Reading.model_validate({"timestamp": 1e9 + 30, "value": 1.0}), "r", 0, 101
    )
    out = await run(processor, [dup, late], states)
    assert sorted(r.code for _, r in out.rejected) == ["duplicate", "late"]
    assert states["a"].events == 20


async def test_a_time_gap_is_filled_and_never_reaches_the_network_as_nan() -> None:
    seen: list[np.ndarray] = []

    async def recording(windows: np.ndarray) -> np.ndarray:
        seen.append(windows)
        return np.repeat(windows[:, -1:, :], HORIZON, axis=1)

    processor = SeriesProcessor(group(), recording, lambda: "v")
    states: dict[str, KeyState] = {}
    await run(processor, events("a", wave(20)), states)
    out = await run(processor, events("a", [None, 10.5, 10.4], start=25), states)  # 5 steps missing
    assert out.outcomes["gap"] == 1 and out.outcomes["missing_value"] == 1
    assert all(np.isfinite(w).all() for w in seen)
    assert len(out.predictions) == 3


async def test_a_spike_opens_one_incident_and_stays_out_of_the_training_buffer() -> None:
    values = wave(80)
    values[60] += 25.0
    processor = SeriesProcessor(group(), PersistencePredictor(), lambda: "v")
    out = await run(processor, events("a", values), {})
    firing = [a for a in out.alerts if a.status == "firing"]
    assert len(firing) == 1 and firing[0].start == 1e9 + 60 * 60
    flagged = [p for p in out.predictions if p.anomaly]
    assert flagged and flagged[0].timestamp == 1e9 + 60 * 60
    assert out.outcomes["withheld_from_training"] == len(flagged)
    # examples: every event once window + horizon values exist, minus the flagged ones
    assert len(out.examples) == (80 - (WINDOW + HORIZON) + 1) - len(flagged)
    # the window carries the calendar columns (timestamps are regular); targets: values only
    assert all(
        e.window.shape == (WINDOW, 5) and e.target.shape == (HORIZON, 1) for e in out.examples
    )


async def test_state_saved_mid_stream_resumes_identically() -> None:
    values = wave(60)
    straight = await run(
        SeriesProcessor(group(), PersistencePredictor(), lambda: "v"), events("a", values), {}
    )
    processor = SeriesProcessor(group(), PersistencePredictor(), lambda: "v")
    states: dict[str, KeyState] = {}
    first = await run(processor, events("a", values[:30]), states)
    restored = {"a": KeyState.from_dict(json.loads(json.dumps(states["a"].to_dict())))}
    second = await run(processor, events("a", values[30:], start=30), restored)
    resumed = first.predictions + second.predictions
    assert [p.model_dump() for p in resumed] == [p.model_dump() for p in straight.predictions]


async def test_a_reading_of_the_wrong_shape_is_rejected() -> None:
    processor = SeriesProcessor(group(), PersistencePredictor(), lambda: "v")
    bad = InputEvent("a", Reading.model_validate({"timestamp": 1, "values": {"x": 1.0}}), "r", 0, 0)
    out = await run(processor, [bad], {})
    assert [r.code for _, r in out.rejected] == ["shape"]


async def test_multivariate_groups_forecast_each_named_channel() -> None:
    multi = ModelGroup(
        name="m",
        channels=["open", "close"],
        model=ModelConfig(
            input_size=2, hidden_size=4, num_layers=1, window=WINDOW, horizon=HORIZON
        ),
    )
    batch = [
        InputEvent(
            "x",
            Reading.model_validate({"timestamp": i, "values": {"open": 1.0 + i, "close": 2.0 + i}}),
            "r",
            0,
            i,
        )
        for i in range(12)
    ]
    out = await run(SeriesProcessor(multi, PersistencePredictor(), lambda: "v"), batch, {})
    last = out.predictions[-1]
    assert last.channels is not None and set(last.channels) == {"open", "close"}
    assert last.channels["close"]["forecast"][0] == pytest.approx(13.0, rel=1e-4)


async def test_stateful_mode_carries_state_exactly_across_batches() -> None:
    """Warm from the first full window, then one step per event: the last forecast equals
    unrolling every row seen so far from a zero state, although the state went through base64
    (as in Redis) between two batches."""
    import torch

    from vigil.models.forecaster import build_forecaster
    from vigil.models.inference import InferenceEngine

    config = ModelConfig(
        hidden_size=6, num_layers=2, window=WINDOW, horizon=HORIZON, residual=False
    )
    model = build_forecaster(config, seed=3)
    engine = InferenceEngine(model, torch.device("cpu"), version="v1")
    rows: list[np.ndarray] = []
    outputs: list[np.ndarray] = []

    async def predict(windows: np.ndarray) -> np.ndarray:
        return engine.predict(windows)

    async def step(x, stored, windows):  # type: ignore[no-untyped-def]
        forecast, states, version = engine.step_keys(x, stored, windows)
        rows.extend(windows[0] if stored[0] is None else x)  # what the state has absorbed
        outputs.append(forecast[0])
        return forecast, states, version

    stateful_group = group().model_copy(update={"model": config, "inference": "stateful"})
    window_group = group().model_copy(update={"model": config})
    values = wave(40)
    states: dict[str, KeyState] = {}
    processor = SeriesProcessor(stateful_group, predict, lambda: "v1", step)
    first = await run(processor, events("a", values[:20]), states)
    second = await run(processor, events("a", values[20:], start=20), states)
    by_window = await run(
        SeriesProcessor(window_group, predict, lambda: "v1"), events("a", values), {}
    )

    assert len(first.predictions) + len(second.predictions) == len(by_window.predictions)
    # the warm-up forecast is the window forecast
    assert first.predictions[0].forecast == pytest.approx(
        by_window.predictions[0].forecast, rel=1e-5
    )
    assert len(rows) == 40  # one warm window of 8 rows, then 32 single steps
    with torch.inference_mode():
        unrolled, _ = model.unroll(torch.from_numpy(np.stack(rows)[None].astype(np.float32)), None)
    np.testing.assert_allclose(outputs[-1], unrolled[0].numpy(), rtol=1e-4, atol=1e-5)
    assert states["a"].hidden_version == "v1"


async def test_a_model_swap_rewarms_stateful_keys_from_their_window() -> None:
    import torch

    from vigil.models.forecaster import build_forecaster
    from vigil.models.inference import InferenceEngine

    config = ModelConfig(
        hidden_size=6, num_layers=1, window=WINDOW, horizon=HORIZON, residual=False
    )
    engine = InferenceEngine(build_forecaster(config, seed=1), torch.device("cpu"), version="v1")
    warmed: list[bool] = []

    async def step(x, stored, windows):  # type: ignore[no-untyped-def]
        warmed.append(stored[0] is None or stored[0][1] != engine.version)  # the engine's rule
        forecast, states, version = engine.step_keys(x, stored, windows)
        if warmed[-1]:  # a warmed key gets exactly the window forecast of the model that ran
            np.testing.assert_allclose(forecast, engine.predict(windows), rtol=1e-5, atol=1e-6)
        return forecast, states, version

    async def predict(windows: np.ndarray) -> np.ndarray:
        return engine.predict(windows)

    stateful_group = group().model_copy(update={"model": config, "inference": "stateful"})
    processor = SeriesProcessor(stateful_group, predict, lambda: engine.version, step)
    states: dict[str, KeyState] = {}
    await run(processor, events("a", wave(12)), states)
    engine.swap(build_forecaster(config, seed=2), version="v2")
    await run(processor, events("a", wave(14)[12:], start=12), states)
    assert warmed == [True, False, False, False, False, True, False]
    assert states["a"].hidden_version == "v2"
