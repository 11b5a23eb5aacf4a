"""A worker SIGKILLed between an alert's Kafka acknowledgement and its Redis state write: the
restarted worker produces the alert again, and alerting still logs and delivers it once.

What it proves, against real Kafka, Redis, worker processes and an HTTP receiver:

* the crash window is real: the alert was acknowledged on the alerts topic (batch step 1) while
  the state write (step 2) was held by ``CLIENT PAUSE WRITE``, so the events' offsets were never
  committed and the replacement worker processed the spike again from the key's pre-spike state;
* the re-produced alert carries the same ``alert_id`` (it is derived from key and start), so the
  alerts topic ends up holding the same (alert id, status) twice: asserted, or the test would be
  vacuous;
* the alerting consumer accepts it once: the alert log holds it once and the receiver got it
  once. The log count is what fails without the consumer's (alert id, status) dedupe (its
  ``SET NX`` on ``…:seen:…``): both copies would be appended. The receiver count alone would not
  always catch that, since two copies in one group window merge and a notification id already
  queued is not queued again; it is the property the user sees, so it is asserted too.

``CLIENT PAUSE WRITE`` is server-wide: it also holds the killed worker's own alerting writes (it
never accepts the first copy, so both copies reach the new worker's alerting consumer) and, for
the second or so it lasts, other clients of the same Redis. It is lifted right after the kill.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis
from aiokafka.admin import AIOKafkaAdminClient

from tests.alerting_worker import alerting_worker_settings
from tests.kafka_io import produce, read_topic, reading, values
from tests.webhook_receiver import WebhookReceiver, wait_until
from tests.worker_process import WorkerProcess
from vigil.settings import (
    StreamConfig,
    VigilSettings,
)
from vigil.topics import ensure_topics

pytestmark = pytest.mark.services

KEY = "boiler-7"
SPIKE_AT = 45
PAUSE_MS = 30_000  # an upper bound only: the pause is lifted right after the kill


def ts(i: int) -> float:
    return 1_700_000_000 + 60.0 * i


def value(i: int) -> float:
    """A wavy series with one spike of 60 at SPIKE_AT."""
    return 10.0 + math.sin(i / 3.0) + 0.05 * ((i * 7919) % 13) + (60.0 if i == SPIKE_AT else 0.0)


def readings(first: int, last: int) -> list[tuple[bytes, bytes]]:
    return [(KEY.encode(), reading(ts(i), value(i))) for i in range(first, last + 1)]


def saved_prediction_ts(client: redis.Redis, settings: VigilSettings) -> float | None:
    """Timestamp of the key's latest prediction in Redis: written with its state, in one go."""
    raw = client.hget(f"vigil:{settings.app_id}:predictions", KEY)
    return None if raw is None else float(json.loads(raw)["timestamp"])


def alerting_idle(client: redis.Redis, settings: VigilSettings) -> bool:
    """No group waiting, no notification in the outbox, no delivery pending or leased."""
    prefix = f"vigil:{settings.app_id}:webhooks"
    if client.zcard(f"{prefix}:groups:due") or client.hlen(f"{prefix}:outbox"):
        return False
    queues = [*client.scan_iter(f"{prefix}:due:*"), *client.scan_iter(f"{prefix}:lease:*")]
    return all(client.zcard(queue) == 0 for queue in queues)


async def alerting_committed(settings: VigilSettings) -> dict[int, int]:
    """Offsets the alerting consumer group has committed on the alerts topic, by partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(f"{settings.app_id}-alerting")
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == settings.topics.alerts
    }


async def test_an_alert_reproduced_after_a_crash_is_delivered_once(
    settings: VigilSettings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    async with WebhookReceiver() as receiver:
        configured = alerting_worker_settings(
            settings, receiver.url, "s3cret", stream=StreamConfig(session_timeout_s=6)
        )
        await ensure_topics(configured)
        first = WorkerProcess(configured, tmp_path, "worker-1").start()
        second: WorkerProcess | None = None
        try:
            await asyncio.to_thread(first.wait_ready)
            # 1. warm the key up to just before the spike, and wait until that state is saved
            await produce(configured, configured.topics.readings, readings(0, SPIKE_AT - 1))
            last_warm = ts(SPIKE_AT - 1)
            await wait_until(
                lambda: saved_prediction_ts(redis_client, configured) == last_warm,
                timeout_s=120, what="the warm-up state in Redis",
            )  # fmt: skip

            # 2. hold every Redis write, then send the spike: its alert is produced and acked,
            #    its state write blocks; kill the worker as soon as the alert is on the topic
            redis_client.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
            try:
                await produce(configured, configured.topics.readings, readings(SPIKE_AT, SPIKE_AT))
                fired = await read_topic(configured, configured.topics.alerts, count=1)
                assert fired, f"no alert for the spike:\n{first.log_tail()}"
                await asyncio.to_thread(first.kill)
            finally:
                redis_client.execute_command("CLIENT", "UNPAUSE")
            assert saved_prediction_ts(redis_client, configured) == last_warm  # write never ran

            # 3. a new worker on the same settings processes the spike again
            second = WorkerProcess(configured, tmp_path, "worker-2").start()
            await asyncio.to_thread(second.wait_ready)
            copies = await read_topic(configured, configured.topics.alerts, count=2, timeout_s=120)
            assert len(copies) == 2, f"the alert was not produced again:\n{second.log_tail()}"
            ends = {c.partition: c.offset + 1 for c in copies}
            await wait_until(lambda: receiver.accepted_bodies() != [], timeout_s=60)

            async def settled() -> bool:
                committed = await alerting_committed(configured)
                return all(committed.get(p, -1) >= end for p, end in ends.items())

            for _ in range(600):  # both copies went through the consumer, then nothing is left
                if await settled() and alerting_idle(redis_client, configured):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the alerting consumer did not finish both copies")
            async with httpx.AsyncClient() as client:
                logged = (await client.get(f"{second.url}/alerts", params={"since": 0})).json()
        finally:
            await asyncio.to_thread(first.kill)
            if second is not None:
                await asyncio.to_thread(second.stop)

        alerts = values(copies)
        identity = f"{alerts[0]['alert_id']}:{alerts[0]['status']}"
        assert alerts[0]["status"] == "firing" and alerts[0]["key"] == KEY
        assert {f"{a['alert_id']}:{a['status']}" for a in alerts} == {identity}  # one incident
        assert Counter(f"{a['alert_id']}:{a['status']}" for a in logged["alerts"]) == {identity: 1}
        assert Counter(receiver.accepted_alert_ids()) == {identity: 1}
        assert max(receiver.accepted.values()) == 1
