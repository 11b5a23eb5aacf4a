"""BatchScheduler and BatchSizer: pure scheduling logic with fake predictors (no torch needed)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from vigil.models.batching import BatchRecord, BatchScheduler, BatchSizer, SchedulerStoppedError
from vigil.models.forecaster import build_forecaster
from vigil.models.inference import InferenceEngine
from vigil.settings import BatchConfig, ModelConfig

T, F = 4, 2


class FakeClock:
    """Run time that the fake model decides, so latency tests do not depend on machine load."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class RecordingPredictor:
    """Forecast = the window's last row repeated (H=1); records batch sizes and thread ids."""

    def __init__(self, clock: FakeClock | None = None, per_item_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.threads: set[int] = set()
        self.clock = clock
        self.per_item_s = per_item_s
        self.fail_next = False
        self.release: threading.Event | None = None

    def predict(self, windows: np.ndarray) -> np.ndarray:
        self.threads.add(threading.get_ident())
        self.calls.append(len(windows))
        if self.release is not None:
            self.release.wait(5)
        if self.clock is not None:
            self.clock.now += 0.001 + self.per_item_s * len(windows)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model exploded")
        return windows[:, -1:, :] * 2.0


def window(key: int) -> np.ndarray:
    return np.full((T, F), float(key), dtype=np.float32)


async def started(predictor: RecordingPredictor, **kwargs: object) -> BatchScheduler:
    config = BatchConfig.model_validate(
        {"max_size": 64, "max_wait_ms": 50.0, "latency_target_ms": 1000.0, "max_queue": 10}
        | {k: v for k, v in kwargs.items() if k in BatchConfig.model_fields}
    )
    extra = {k: v for k, v in kwargs.items() if k not in BatchConfig.model_fields}
    scheduler = BatchScheduler(predictor, config, **extra)  # type: ignore[arg-type]
    await scheduler.start()
    return scheduler


async def test_concurrent_submits_share_one_forward_pass_and_get_their_own_rows() -> None:
    predictor = RecordingPredictor()
    scheduler = await started(predictor, max_wait_ms=200.0)
    try:
        results = await asyncio.gather(*(scheduler.submit(window(k)) for k in range(10)))
    finally:
        await scheduler.stop()
    assert predictor.calls == [10]
    for k, result in enumerate(results):
        assert result.shape == (1, F)
        np.testing.assert_array_equal(result, np.full((1, F), 2.0 * k))
    results[0][0, 0] = -1.0  # each caller owns its row
    assert results[1][0, 0] == 2.0


async def test_model_never_runs_on_the_event_loop_thread() -> None:
    predictor = RecordingPredictor()
    scheduler = await started(predictor, max_wait_ms=1.0)
    try:
        await scheduler.submit(window(1))
        await scheduler.submit_many(np.stack([window(k) for k in range(3)]))
    finally:
        await scheduler.stop()
    assert predictor.threads
    assert threading.get_ident() not in predictor.threads
    assert len(predictor.threads) == 1  # one dedicated worker


async def test_max_size_splits_a_burst() -> None:
    predictor = RecordingPredictor()
    scheduler = await started(predictor, max_size=4, max_wait_ms=100.0)
    try:
        out = await scheduler.submit_many(np.stack([window(k) for k in range(10)]))
    finally:
        await scheduler.stop()
    assert max(predictor.calls) <= 4
    assert sum(predictor.calls) == 10
    np.testing.assert_array_equal(out[:, 0, 0], 2.0 * np.arange(10))


async def test_a_lone_request_waits_at_most_max_wait() -> None:
    predictor = RecordingPredictor()
    scheduler = await started(predictor, max_wait_ms=20.0)
    try:
        result = await asyncio.wait_for(scheduler.submit(window(3)), timeout=2.0)
    finally:
        await scheduler.stop()
    assert predictor.calls == [1]
    assert result[0, 0] == 6.0
    assert scheduler.stats().recent[0].wait_seconds >= 0.015


async def test_a_gathered_batch_does_not_wait_for_more() -> None:
    """submit_many hands over a batch its caller already gathered: no max_wait on top."""
    predictor = RecordingPredictor()
    scheduler = await started(predictor, max_wait_ms=1000.0)
    try:
        out = await asyncio.wait_for(
            scheduler.submit_many(np.stack([window(k) for k in range(3)])), timeout=0.5
        )
        lone = await asyncio.wait_for(scheduler.submit(window(4)), timeout=2.0)
        assert lone[0, 0] == 8.0
    finally:
        await scheduler.stop()
    np.testing.assert_array_equal(out[:, 0, 0], [0.0, 2.0, 4.0])
    assert predictor.calls == [3, 1]
    waits = [r.wait_seconds for r in scheduler.stats().recent]
    assert waits[0] < 0.5 and waits[1] >= 0.9  # a lone submit still waits for company


async def test_errors_reach_every_caller_of_the_failed_batch_only() -> None:
    predictor = RecordingPredictor()
    records: list[BatchRecord] = []
    scheduler = await started(predictor, max_wait_ms=100.0, on_batch=records.append)
    try:
        predictor.fail_next = True
        failed = await asyncio.gather(
            *(scheduler.submit(window(k)) for k in range(3)), return_exceptions=True
        )
        ok = await scheduler.submit(window(5))
    finally:
        await scheduler.stop()
    assert all(isinstance(e, RuntimeError) and "exploded" in str(e) for e in failed)
    assert ok[0, 0] == 10.0
    assert [r.failed for r in records] == [True, False]
    assert scheduler.stats().failed_batches == 1


async def test_bad_windows_are_refused_at_submit_without_hurting_others() -> None:
    predictor = RecordingPredictor()
    scheduler = await started(predictor, window_shape=(T, F))
    try:
        with pytest.raises(ValueError, match="shape"):
            await scheduler.submit(np.zeros((T + 1, F)))
        nan = window(1)
        nan[0, 0] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            await scheduler.submit(nan)
        assert (await scheduler.submit(window(2)))[0, 0] == 4.0
    finally:
        await scheduler.stop()


async def test_stop_fails_queued_requests_and_finishes_the_running_batch() -> None:
    predictor = RecordingPredictor()
    predictor.release = threading.Event()
    scheduler = await started(predictor, max_size=2, max_wait_ms=0.0)
    tasks = [asyncio.create_task(scheduler.submit(window(k))) for k in range(5)]
    while not predictor.calls:  # first batch is now blocked inside the model
        await asyncio.sleep(0.005)
    assert scheduler.queue_depth == 3
    stopping = asyncio.create_task(scheduler.stop())
    await asyncio.sleep(0.02)
    predictor.release.set()
    await stopping
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [isinstance(r, np.ndarray) for r in results] == [True, True, False, False, False]
    assert all(isinstance(r, SchedulerStoppedError) for r in results[2:])
    with pytest.raises(SchedulerStoppedError):
        await scheduler.submit(window(0))


async def test_queue_depth() -> None:
    predictor = RecordingPredictor()
    predictor.release = threading.Event()
    scheduler = await started(predictor, max_size=1, max_wait_ms=0.0, max_queue=3)
    tasks = [asyncio.create_task(scheduler.submit(window(k))) for k in range(6)]
    while not predictor.calls:
        await asyncio.sleep(0.005)
    assert scheduler.queue_depth == 5
    predictor.release.set()
    await asyncio.gather(*tasks)
    assert scheduler.queue_depth == 0
    await scheduler.stop()


async def test_latency_target_caps_the_batch_size() -> None:
    # run time = 1 ms + 1 ms per window: 8 windows take 9 ms, 16 take 17 ms; target 12 ms → 8
    clock = FakeClock()
    predictor = RecordingPredictor(clock, per_item_s=0.001)
    scheduler = await started(
        predictor, max_size=64, max_wait_ms=5.0, latency_target_ms=12.0, clock=clock, probe_every=0
    )
    try:
        await scheduler.submit_many(np.stack([window(k) for k in range(200)]))
    finally:
        await scheduler.stop()
    # nothing measured yet: optimistic; the first run of a size is warm-up and not recorded
    assert predictor.calls[:2] == [64, 64]
    assert predictor.calls[2:] == [8] * 9  # capped, but using the whole allowance
    assert scheduler.cap == 8
    assert sum(predictor.calls) == 200


async def test_sizer_ignores_the_first_run_of_each_size() -> None:
    sizer = BatchSizer(max_size=16, latency_target_s=0.010)
    sizer.record(16, 0.500)  # first run at this shape: kernel set-up, not representative
    assert sizer.estimate(16) is None
    sizer.record(16, 0.004)
    assert sizer.estimate(16) == pytest.approx(0.004)
    assert sizer.cap() == 16


async def test_generous_target_allows_max_size() -> None:
    clock = FakeClock()
    predictor = RecordingPredictor(clock, per_item_s=0.0001)
    scheduler = await started(
        predictor, max_size=32, max_wait_ms=5.0, latency_target_ms=500.0, clock=clock
    )
    try:
        for _ in range(3):
            await scheduler.submit_many(np.stack([window(k) for k in range(32)]))
    finally:
        await scheduler.stop()
    assert predictor.calls == [32, 32, 32]
    assert scheduler.cap == 32


def test_sizer_estimates_probes_and_scales_partial_batches() -> None:
    sizer = BatchSizer(max_size=100, latency_target_s=0.010, probe_every=3, warmup_runs=0)
    assert sizer.buckets == [1, 2, 4, 8, 16, 32, 64, 100]
    assert sizer.cap() == 100  # nothing measured
    sizer.record(8, 0.002)
    assert sizer.estimate(32) == pytest.approx(0.008)  # scaled up from 8
    assert sizer.cap() == 32
    sizer.record(3, 0.003)  # partial batch in bucket 4, scaled up: 4 ms
    assert sizer.estimate(4) == pytest.approx(0.004)
    assert [sizer.next_cap() for _ in range(3)] == [32, 32, 64]  # every third batch probes
    for _ in range(20):
        sizer.record(64, 0.009)  # the probe showed 64 fits after all
    assert sizer.cap() == 64


async def test_engine_under_scheduler_matches_direct_predict() -> None:
    config = ModelConfig.model_validate(
        {"hidden_size": 8, "num_layers": 1, "window": T, "input_size": F, "horizon": 2}
    )
    engine = InferenceEngine(build_forecaster(config, seed=0), torch.device("cpu"))
    windows = np.random.default_rng(2).normal(size=(7, T, F)).astype(np.float32)
    scheduler = BatchScheduler(engine, BatchConfig.model_validate({"max_wait_ms": 50.0}))
    await scheduler.start()
    try:
        out = await scheduler.submit_many(windows)
    finally:
        await scheduler.stop()
    np.testing.assert_allclose(out, engine.predict(windows), atol=1e-6)
