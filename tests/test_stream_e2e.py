"""End to end through the real broker and the real Redis: a real `vigil worker` process."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import pytest
import redis

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

WINDOW = 8


def small_groups() -> list[ModelGroup]:
    return [
        ModelGroup(
            name="sensors",
            key_patterns=["sensor-*"],
            model=ModelConfig(hidden_size=8, num_layers=1, window=WINDOW, horizon=2),
            training=TrainingConfig(
                min_examples=16, holdout_size=8, batch_size=8, steps_per_round=3
            ),
            detector=DetectorConfig(
                warmup_events=20, cooldown_events=5, threshold=0.99, clear_threshold=0.9
            ),
        )
    ]


@pytest.fixture
def stream_settings(settings: VigilSettings) -> VigilSettings:
    configured = settings.model_copy(
        update={"groups": small_groups(), "batch": BatchConfig(max_size=64, max_wait_ms=5)}
    )
    asyncio.run(ensure_topics(configured))
    return configured


def series(key_index: int, n: int, spike_at: int | None = None) -> list[float]:
    out = [10.0 * (key_index + 1) + math.sin(i / 3.0) + 0.05 * ((i * 7919) % 13) for i in range(n)]
    if spike_at is not None:
        out[spike_at] += 60.0
    return out


def test_readings_become_predictions_alerts_and_redis_state(
    stream_settings: VigilSettings, tmp_path: Path, redis_client: redis.Redis
) -> None:
    settings = stream_settings
    n, keys = 60, ["sensor-a", "sensor-b", "sensor-c"]
    records = []
    for i in range(n):
        for k, key in enumerate(keys):
            value = series(k, n, spike_at=45 if key == "sensor-b" else None)[i]
            records.append((key.encode(), reading(1_700_000_000 + 60 * i, value)))
    sent = asyncio.run(produce(settings, settings.topics.readings, records))
    source = {
        (m.partition, m.offset): (key.decode(), json.loads(value)["timestamp"])
        for (key, value), m in zip(records, sent, strict=True)
    }

    worker = WorkerProcess(settings, tmp_path).start()
    try:
        worker.wait_ready()
        expected = len(keys) * (n - WINDOW + 1)
        predictions = values(
            asyncio.run(read_topic(settings, settings.topics.predictions, count=expected))
        )
        assert len(predictions) == expected
        per_key = Counter(p["key"] for p in predictions)
        assert per_key == {key: n - WINDOW + 1 for key in keys}
        for p in predictions:
            assert len(p["forecast"]) == 2 and len(p["lower"]) == 2
            assert p["lower"][0] <= p["forecast"][0] <= p["upper"][0]
            prov = p["provenance"]
            # provenance names the very record the prediction came from
            assert source[(prov["partition"], prov["offset"])] == (p["key"], p["timestamp"])
            assert prov["topic"] == settings.topics.readings and prov["model_version"].startswith(
                "sensors-"
            )

        alerts = values(
            asyncio.run(read_topic(settings, settings.topics.alerts, count=1, timeout_s=20))
        )
        assert [a["key"] for a in alerts if a["status"] == "firing"] == ["sensor-b"]
        assert alerts[0]["start"] == 1_700_000_000 + 60 * 45

        def latest_is_last() -> bool:
            raw = redis_client.hget(f"vigil:{settings.app_id}:predictions", "sensor-a")
            return json.loads(raw)["timestamp"] == 1_700_000_000 + 60 * (n - 1)

        eventually(latest_is_last)
        state = json.loads(redis_client.get(f"vigil:{settings.app_id}:state:sensors:sensor-a"))
        assert state["events"] == n
        eventually(lambda: redis_client.xlen(f"vigil:{settings.app_id}:alerts") >= 1)

        page = httpx.get(f"{worker.url}/predictions/sensor-c", timeout=5).json()
        assert page["key"] == "sensor-c"
        since = httpx.get(f"{worker.url}/alerts", params={"since": 0}, timeout=5).json()
        assert since["alerts"][0]["key"] == "sensor-b"
        metrics = worker.metrics()
        assert 'vigil_events_total{group="sensors",outcome="predicted"}' in metrics
        assert "vigil_event_to_prediction_seconds_bucket" in metrics
        assert "vigil_event_loop_lag_seconds" in metrics
        # the spike was flagged, so it was kept out of the fine-tuning buffer
        assert 'outcome="withheld_from_training"' in metrics
    finally:
        worker.stop()


def test_every_kind_of_bad_input_lands_in_dead_letters(
    stream_settings: VigilSettings, tmp_path: Path
) -> None:
    settings = stream_settings
    t0 = 1_700_000_000
    good = [(b"sensor-x", reading(t0 + 60 * i, float(i))) for i in range(12)]
    bad: list[tuple[bytes | None, bytes]] = [
        (b"sensor-x", b"{not json"),
        (b"sensor-x", b'{"timestamp": 1700000000, "value": NaN}'),
        (b"sensor-x", b'{"timestamp": 1700000000, "value": Infinity}'),
        (b"sensor-x", b'{"value": 3}'),
        (b"sensor-x", b'{"timestamp": 1700009999, "value": "abc"}'),
        (None, reading(t0, 1.0)),
        (b"other-key", reading(t0, 1.0)),  # no group serves it
        (b"sensor-x", reading(t0 + 60 * 11, 5.0)),  # duplicate timestamp
        (b"sensor-x", reading(t0 + 60 * 3 + 30, 5.0)),  # late
        (
            b"sensor-x",
            json.dumps({"timestamp": t0 + 60 * 20, "values": {"a": 1}}).encode(),
        ),  # shape
    ]
    # The good events are processed first, so the late one arrives after its key's clock moved on
    # (within one batch, events are put back in time order instead).
    asyncio.run(produce(settings, settings.topics.readings, good))
    worker = WorkerProcess(settings, tmp_path).start()
    try:
        worker.wait_ready()
        done = asyncio.run(read_topic(settings, settings.topics.predictions, count=12 - WINDOW + 1))
        assert len(done) == 12 - WINDOW + 1
        sent_bad = asyncio.run(produce(settings, settings.topics.readings, bad))
        letters = values(
            asyncio.run(read_topic(settings, settings.topics.dead_letters, count=len(bad)))
        )
    finally:
        worker.stop()
    assert len(letters) == len(bad)
    codes = Counter(letter["reason"].split(":")[0] for letter in letters)
    assert codes == {
        "not_json": 1, "nan_or_inf": 2, "missing_field": 1, "non_numeric": 1, "missing_key": 1,
        "no_group": 1, "duplicate": 1, "late": 1, "shape": 1,
    }  # fmt: skip
    by_offset = {(letter["partition"], letter["offset"]): letter for letter in letters}
    for (_key, value), meta in zip(bad, sent_bad, strict=True):
        letter = by_offset[(meta.partition, meta.offset)]
        assert letter["original"].encode("latin-1") == value  # nothing lost
        assert letter["topic"] == settings.topics.readings


def test_sigkill_mid_stream_loses_nothing_and_state_resumes(
    stream_settings: VigilSettings, tmp_path: Path, redis_client: redis.Redis
) -> None:
    settings = stream_settings
    keys = [f"sensor-{i}" for i in range(6)]
    n = 150
    records = [
        (key.encode(), reading(1_700_000_000 + 60 * i, series(k, n)[i]))
        for i in range(n)
        for k, key in enumerate(keys)
    ]
    sent = asyncio.run(produce(settings, settings.topics.readings, records))
    first = WorkerProcess(settings, tmp_path, "first").start()
    first.wait_ready()
    seen = asyncio.run(read_topic(settings, settings.topics.predictions, count=200, timeout_s=60))
    first.kill()
    assert len(seen) >= 200

    second = WorkerProcess(settings, tmp_path, "second").start()
    try:
        second.wait_ready()
        expected = len(keys) * (n - WINDOW + 1)
        deadline_records = asyncio.run(
            read_topic(settings, settings.topics.predictions, count=expected + 400, timeout_s=45)
        )
    finally:
        second.stop()
    predictions = values(deadline_records)
    covered = {(p["provenance"]["partition"], p["provenance"]["offset"]) for p in predictions}
    by_key: dict[str, list[int]] = defaultdict(list)
    for (key, _), meta in zip(records, sent, strict=True):
        by_key[key.decode()].append(meta.offset)
    for key, key_offsets in by_key.items():
        partition = next(
            m.partition for (k, _), m in zip(records, sent, strict=True) if k.decode() == key
        )
        wanted = key_offsets[WINDOW - 1 :]  # every event once the window is full
        missing = [o for o in wanted if (partition, o) not in covered]
        assert not missing, f"{key}: no prediction for offsets {missing[:5]}"
        state_key = f"vigil:{settings.app_id}:state:sensors:{key}"
        # resumed, not restarted and not double counted
        eventually(lambda k=state_key: json.loads(redis_client.get(k))["events"] == n)


def test_two_workers_split_the_partitions(stream_settings: VigilSettings, tmp_path: Path) -> None:
    settings = stream_settings
    keys = [f"sensor-{i}" for i in range(12)]
    n = 30
    workers = [WorkerProcess(settings, tmp_path, f"w{i}").start() for i in range(2)]
    try:
        for worker in workers:
            worker.wait_ready()
        records = [
            (key.encode(), reading(1_700_000_000 + 60 * i, series(k, n)[i]))
            for i in range(n)
            for k, key in enumerate(keys)
        ]
        asyncio.run(produce(settings, settings.topics.readings, records))
        expected = len(keys) * (n - WINDOW + 1)
        predictions = asyncio.run(
            read_topic(settings, settings.topics.predictions, count=expected, timeout_s=90)
        )
        assert len({(r.partition, r.offset) for r in predictions}) >= expected
        processed = [
            sample_total(w.metrics(), "vigil_events_total", group="sensors", outcome="predicted")
            for w in workers
        ]
        assert all(count > 0 for count in processed), processed  # both workers did real work
    finally:
        for worker in workers:
            worker.stop()


def test_overload_pauses_busy_partitions_and_loses_nothing(
    stream_settings: VigilSettings, tmp_path: Path
) -> None:
    """A backlog far larger than the bounded buffer: partitions pause, every event is predicted."""
    settings = stream_settings.model_copy(
        update={"batch": BatchConfig(max_size=16, max_wait_ms=5, max_queue=32)}
    )
    keys = [f"sensor-{i}" for i in range(8)]
    n = 250
    records = [
        (key.encode(), reading(1_700_000_000 + 60 * i, series(k, n)[i]))
        for i in range(n)
        for k, key in enumerate(keys)
    ]
    sent = asyncio.run(produce(settings, settings.topics.readings, records))
    worker = WorkerProcess(settings, tmp_path).start()
    try:
        worker.wait_ready()
        expected = len(keys) * (n - WINDOW + 1)
        found = asyncio.run(
            read_topic(settings, settings.topics.predictions, count=expected, timeout_s=120)
        )
        metrics = worker.metrics()
    finally:
        worker.stop()
    covered = {(p["provenance"]["partition"], p["provenance"]["offset"]) for p in values(found)}
    per_key_offsets: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for (key, _), meta in zip(records, sent, strict=True):
        per_key_offsets[key.decode()].append((meta.partition, meta.offset))
    for key, offsets in per_key_offsets.items():
        missing = [o for o in offsets[WINDOW - 1 :] if o not in covered]
        assert not missing, f"{key}: lost {len(missing)} events, e.g. {missing[:3]}"
    pushed_back = sample_total(metrics, "vigil_buffer_full_total") + sample_total(
        metrics, "vigil_intake_holds_total"
    )
    assert pushed_back > 0  # a full buffer or the in-worker limit held the excess in Kafka


def test_a_stateful_group_keeps_its_hidden_state_in_redis_across_a_restart(
    stream_settings: VigilSettings, tmp_path: Path, redis_client: redis.Redis
) -> None:
    groups = [g.model_copy(update={"inference": "stateful"}) for g in small_groups()]
    settings = stream_settings.model_copy(update={"groups": groups})
    n = 40
    first = [(b"sensor-s", reading(1_700_000_000 + 60 * i, series(0, 2 * n)[i])) for i in range(n)]
    asyncio.run(produce(settings, settings.topics.readings, first))
    state_key = f"vigil:{settings.app_id}:state:sensors:sensor-s"
    worker = WorkerProcess(settings, tmp_path, "a").start()
    try:
        worker.wait_ready()
        got = asyncio.run(read_topic(settings, settings.topics.predictions, count=n - WINDOW + 1))
        assert len(got) == n - WINDOW + 1

        def saved_after_all() -> dict:
            state = json.loads(redis_client.get(state_key))  # outputs go out before the state
            assert state["events"] == n
            return state

        before = eventually(saved_after_all)
        assert before["hidden"]
    finally:
        worker.stop()
    second = [
        (b"sensor-s", reading(1_700_000_000 + 60 * i, series(0, 2 * n)[i])) for i in range(n, 2 * n)
    ]
    asyncio.run(produce(settings, settings.topics.readings, second))
    worker = WorkerProcess(settings, tmp_path, "b").start()
    try:
        worker.wait_ready()
        got = asyncio.run(
            read_topic(settings, settings.topics.predictions, count=2 * n - WINDOW + 1)
        )
    finally:
        worker.stop()
    assert len(got) == 2 * n - WINDOW + 1
    after = json.loads(redis_client.get(state_key))
    assert after["events"] == 2 * n and after["hidden"] != before["hidden"]
    assert after["hidden_version"] == before["hidden_version"]  # no swap: stepped, not re-warmed


def _committed(settings: VigilSettings, partition: int) -> int:
    """The worker's consumer group's committed offset on one readings partition (-1: none)."""

    async def read() -> int:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.structs import TopicPartition

        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(settings.app_id)
        finally:
            await admin.close()
        meta = offsets.get(TopicPartition(settings.topics.readings, partition))
        return meta.offset if meta is not None else -1

    return asyncio.run(read())


def test_offsets_are_committed_only_after_the_state_is_saved(
    stream_settings: VigilSettings, tmp_path: Path, redis_client: redis.Redis
) -> None:
    """Redis refuses writes for a while (CLIENT PAUSE WRITE): predictions still reach Kafka,
    but the consumer group's offset must not pass the events whose state is not saved."""
    settings = stream_settings
    key = b"sensor-p"
    state_key = f"vigil:{settings.app_id}:state:sensors:sensor-p"
    data = series(0, 120)

    def batch(start: int, stop: int) -> list[tuple[bytes, bytes]]:
        return [(key, reading(1_700_000_000 + 60 * i, data[i])) for i in range(start, stop)]

    sent = asyncio.run(produce(settings, settings.topics.readings, batch(0, 60)))
    partition = sent[0].partition
    worker = WorkerProcess(settings, tmp_path).start()
    try:
        worker.wait_ready()
        eventually(lambda: json.loads(redis_client.get(state_key) or b"{}").get("events") == 60)
        eventually(lambda: _committed(settings, partition) == sent[-1].offset + 1, timeout_s=15)
        committed_before = _committed(settings, partition)

        redis_client.execute_command("CLIENT", "PAUSE", 6000, "WRITE")
        try:
            asyncio.run(produce(settings, settings.topics.readings, batch(60, 120)))
            # the outputs of the new events are delivered although their state cannot be saved
            wanted = 60 - WINDOW + 2  # at least one prediction of a new event
            got = asyncio.run(
                read_topic(settings, settings.topics.predictions, count=wanted, timeout_s=4)
            )
            assert len(got) >= wanted
            time.sleep(2.5)  # more than two commit intervals (1 s)
            assert _committed(settings, partition) == committed_before
            assert json.loads(redis_client.get(state_key))["events"] == 60
        finally:
            redis_client.execute_command("CLIENT", "UNPAUSE")
        eventually(lambda: json.loads(redis_client.get(state_key))["events"] == 120)
        eventually(lambda: _committed(settings, partition) == committed_before + 60, timeout_s=15)
    finally:
        worker.stop()
