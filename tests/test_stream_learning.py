"""Learning while streaming, through the real broker and Redis: drift events, and an event loop
that stays responsive while inference and training run flat out on their own threads."""

from __future__ import annotations

import asyncio
import math
import random
from pathlib import Path

import pytest

from tests.kafka_io import produce, read_topic, reading, values
from tests.polling import eventually
from tests.worker_process import WorkerProcess
from vigil.bench.prometheus_histogram import sample_total
from vigil.settings import (
    BatchConfig,
    DetectorConfig,
    ModelConfig,
    ModelGroup,
    TrainingConfig,
    VigilSettings,
)
from vigil.topics import ensure_topics

pytestmark = pytest.mark.services


def sample(metrics: str, name: str, **labels: str) -> float:
    """One metric's value from /metrics text; its absence fails the test."""
    assert f"\n{name}" in f"\n{metrics}", f"{name} not in /metrics"
    return sample_total(metrics, name, **labels)


def test_a_regime_change_emits_a_drift_event(settings: VigilSettings, tmp_path: Path) -> None:
    configured = settings.model_copy(
        update={
            "groups": [
                ModelGroup(
                    name="plant",
                    model=ModelConfig(hidden_size=8, num_layers=1, window=8, horizon=1),
                    training=TrainingConfig(enabled=False),
                    detector=DetectorConfig(warmup_events=30),
                )
            ],
            "batch": BatchConfig(max_size=64, max_wait_ms=5),
        }
    )
    asyncio.run(ensure_topics(configured))
    rng = random.Random(11)
    n, change = 400, 200
    series = [20 + math.sin(i / 5) + rng.gauss(0, 0.1 if i < change else 1.5) for i in range(n)]
    records = [(b"pump-7", reading(1_700_000_000 + 60 * i, v)) for i, v in enumerate(series)]
    asyncio.run(produce(configured, configured.topics.readings, records))
    worker = WorkerProcess(configured, tmp_path).start()
    try:
        worker.wait_ready()
        drift = values(
            asyncio.run(read_topic(configured, configured.topics.drift, count=1, timeout_s=60))
        )
        metrics = worker.metrics()
    finally:
        worker.stop()
    assert drift, "no drift event after the noise grew fifteen-fold"
    first = drift[0]
    assert first["key"] == "pump-7" and first["direction"] == "up"
    assert first["timestamp"] >= 1_700_000_000 + 60 * change  # not before the change
    assert first["lr_scale"] > 1.0  # training speeds up after a regime change
    assert sample(metrics, "vigil_drift_events_total", group="plant") >= 1


def test_the_event_loop_stays_responsive_while_torch_runs_flat_out(
    settings: VigilSettings, tmp_path: Path
) -> None:
    configured = settings.model_copy(
        update={
            "groups": [
                ModelGroup(
                    name="heavy",
                    model=ModelConfig(hidden_size=96, num_layers=2, window=48, horizon=1),
                    training=TrainingConfig(
                        min_examples=64, holdout_size=16, batch_size=128, steps_per_round=80
                    ),
                    detector=DetectorConfig(warmup_events=20),
                )
            ],
            "batch": BatchConfig(max_size=256, max_wait_ms=5),
        }
    )
    asyncio.run(ensure_topics(configured))
    keys, n = 16, 300
    records = [
        (f"m-{k}".encode(), reading(1_700_000_000 + 60 * i, 10 * k + math.sin(i / 4)))
        for i in range(n)
        for k in range(keys)
    ]
    asyncio.run(produce(configured, configured.topics.readings, records))
    worker = WorkerProcess(configured, tmp_path).start()
    try:
        worker.wait_ready()
        expected = keys * (n - 48 + 1)
        found = asyncio.run(
            read_topic(configured, configured.topics.predictions, count=expected, timeout_s=180)
        )
        # rounds are long on purpose; wait until two have finished (the loop lag window is 60 s)
        metrics = eventually(
            lambda: (
                (m := worker.metrics())
                and sample(m, "vigil_training_round_seconds_count") >= 2
                and m
            ),
            timeout_s=120,
            interval_s=1.0,
        )
    finally:
        worker.stop()
    assert len(found) >= expected
    rounds = sample(metrics, "vigil_training_round_seconds_count")
    round_seconds = sample(metrics, "vigil_training_round_seconds_sum") / max(rounds, 1)
    batches = sample(metrics, "vigil_inference_seconds_count")
    loop_lag = sample(metrics, "vigil_event_loop_lag_max_seconds")
    assert rounds >= 1 and batches >= 10
    # Had a training round run on the event loop, the loop would have stalled for a whole round.
    assert loop_lag < 0.5 * round_seconds, (loop_lag, round_seconds)
