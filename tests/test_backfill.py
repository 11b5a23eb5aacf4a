"""Backfill on purpose: history older than a key's state is `late` for the live app, and is
replayed under an app id (and topics) of its own, with its own state, as docs/deploy.md shows:

    VIGIL_APP_ID=backfill-x VIGIL_TOPICS='{"readings": "backfill-x.readings", ...}' \\
        vigil connect replay old.csv --key sensor-k   # then, in the same environment:
    VIGIL_APP_ID=backfill-x VIGIL_TOPICS='...' vigil worker
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from tests.kafka_io import produce, read_topic, reading, values
from tests.worker_process import WorkerProcess
from vigil.cli import app
from vigil.settings import (
    BatchConfig,
    ModelConfig,
    ModelGroup,
    TopicNames,
    TrainingConfig,
    VigilSettings,
)
from vigil.topics import ensure_topics

pytestmark = pytest.mark.services

WINDOW = 6
KEY = "sensor-k"
NEW_T0 = 1_750_000_000  # the live app has seen these
OLD_T0 = 1_700_000_000  # the history to backfill, older than every live event


def own_topics(prefix: str, partitions: int) -> TopicNames:
    return TopicNames(
        readings=f"{prefix}.readings", predictions=f"{prefix}.predictions",
        alerts=f"{prefix}.alerts", dead_letters=f"{prefix}.dead-letters",
        model_versions=f"{prefix}.model-versions", drift=f"{prefix}.drift", partitions=partitions,
    )  # fmt: skip


@pytest.fixture
def live_and_backfill(
    settings: VigilSettings, redis_client: redis.Redis
) -> Iterator[tuple[VigilSettings, VigilSettings]]:
    group = ModelGroup(
        name="sensors",
        model=ModelConfig(hidden_size=8, num_layers=1, window=WINDOW, horizon=1),
        training=TrainingConfig(enabled=False),
    )
    live = settings.model_copy(
        update={"groups": [group], "batch": BatchConfig(max_size=32, max_wait_ms=5)}
    )
    backfill_id = f"{live.app_id}-backfill"
    backfill = live.model_copy(
        update={"app_id": backfill_id, "topics": own_topics(backfill_id, live.topics.partitions)}
    )
    asyncio.run(ensure_topics(live))
    yield live, backfill
    for app_id in (live.app_id, backfill.app_id):
        names = list(redis_client.scan_iter(match=f"vigil:{app_id}:*", count=1000))
        if names:
            redis_client.delete(*names)


def env_of(settings: VigilSettings) -> dict[str, str]:
    return {
        **os.environ,
        "VIGIL_APP_ID": settings.app_id,
        "VIGIL_TOPICS": settings.topics.model_dump_json(),
        "VIGIL_GROUPS": json.dumps([g.model_dump(mode="json") for g in settings.groups]),
        "VIGIL_KAFKA_BOOTSTRAP": settings.bootstrap,
        "VIGIL_REDIS_URL": settings.redis,
    }


def state_of(settings: VigilSettings, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for name, value in env_of(settings).items():
        if name.startswith("VIGIL_"):
            monkeypatch.setenv(name, value)
    shown = CliRunner().invoke(app, ["state", "show", "--key", KEY, "--json"])
    assert shown.exit_code == 0, shown.output
    loaded: dict[str, Any] = json.loads(shown.stdout)
    return loaded


def latest_prediction(client: redis.Redis, settings: VigilSettings) -> dict[str, Any]:
    raw = client.hget(f"vigil:{settings.app_id}:predictions", KEY)
    assert isinstance(raw, bytes)
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def test_backfill_of_old_data_for_a_key_with_newer_state_runs_under_its_own_app_id(
    live_and_backfill: tuple[VigilSettings, VigilSettings],
    tmp_path: Path,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    live, backfill = live_and_backfill
    n = 12
    newer: list[tuple[bytes | None, bytes]] = [
        (KEY.encode(), reading(NEW_T0 + 60 * i, 20.0 + i % 4)) for i in range(n)
    ]
    asyncio.run(produce(live, live.topics.readings, newer))
    worker = WorkerProcess(live, tmp_path, "live").start()
    try:
        worker.wait_ready()
        done = asyncio.run(read_topic(live, live.topics.predictions, count=n - WINDOW + 1))
        assert len(done) == n - WINDOW + 1
        # History sent to the live app is late for this key: dead-lettered, state untouched.
        asyncio.run(produce(live, live.topics.readings, [(KEY.encode(), reading(OLD_T0, 1.0))]))
        (letter,) = values(asyncio.run(read_topic(live, live.topics.dead_letters, count=1)))
        assert letter["code"] == "late"
    finally:
        worker.stop()
    before = state_of(live, monkeypatch)
    assert before["events"] == n and before["last_ts"] == NEW_T0 + 60 * (n - 1)

    # The backfill: the shipped replay connector and a worker, both under the backfill app id.
    history = tmp_path / "history.csv"
    rows = [
        f"{datetime.fromtimestamp(OLD_T0 + 300 * i, UTC):%Y-%m-%d %H:%M:%S},{5.0 + i % 3}"
        for i in range(n)
    ]
    history.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    replay = subprocess.run(
        [sys.executable, "-m", "vigil.cli", "connect", "replay", str(history), "--key", KEY,
         "--no-progress"], env=env_of(backfill), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert f"total: {n} readings, 0 dead letters" in replay.stdout
    worker = WorkerProcess(backfill, tmp_path, "backfill").start()
    try:
        worker.wait_ready()
        predictions = values(
            asyncio.run(read_topic(backfill, backfill.topics.predictions, count=n - WINDOW + 1))
        )
    finally:
        worker.stop()
    assert len(predictions) == n - WINDOW + 1
    assert {p["key"] for p in predictions} == {KEY}
    assert max(p["timestamp"] for p in predictions) == OLD_T0 + 300 * (n - 1)
    latest = latest_prediction(redis_client, backfill)
    assert latest["timestamp"] == OLD_T0 + 300 * (n - 1)

    # Each app id keeps its own state: the live one did not move, the backfill one has history.
    assert state_of(live, monkeypatch)["last_ts"] == before["last_ts"]
    assert state_of(live, monkeypatch)["events"] == n
    mine = state_of(backfill, monkeypatch)
    assert mine["events"] == n and mine["last_ts"] == OLD_T0 + 300 * (n - 1)
    live_latest = latest_prediction(redis_client, live)
    assert live_latest["timestamp"] == NEW_T0 + 60 * (n - 1)
