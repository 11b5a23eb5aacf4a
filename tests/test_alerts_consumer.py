"""The one path into alerting: alerts topic → AlertsConsumer → alert log + webhook deliveries, on
the real Kafka, Redis and HTTP receivers. Duplicates on the topic, a SIGKILLed `vigil alerting
run` restarted mid-stream, no webhook configured, and alerting's web pages."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import faust
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr
from redis.asyncio import Redis

from tests.kafka_io import produce, read_dead_letters
from tests.webhook_receiver import WebhookReceiver, make_alert, wait_until
from vigil.alerting.alert_log import AlertLog, AlertQueryError, parse_query
from vigil.alerting.consumer import AlertsConsumer, consume_alerts, consumer_group
from vigil.alerting.web import add_alerting_pages
from vigil.bench.worker_subprocess import WorkerSubprocess
from vigil.records import Alert
from vigil.settings import AlertingConfig, VigilSettings, WebhookEndpoint
from vigil.topics import ensure_topics

pytestmark = pytest.mark.services
KEY = "consumer-test-key"


@pytest.fixture
async def aredis(services: VigilSettings) -> AsyncIterator[Redis]:
    client = Redis.from_url(services.redis)
    yield client
    await client.aclose()


def configured(
    settings: VigilSettings, receiver: WebhookReceiver | None, **alerting: Any
) -> VigilSettings:
    endpoints = []
    if receiver is not None:
        endpoints.append(
            WebhookEndpoint.model_validate(
                {
                    "url": receiver.url,
                    "name": f"consumer-{settings.app_id}",
                    "min_severity": "info",
                    "timeout_s": 0.5,
                    "backoff_base_s": 0.01,
                    "backoff_max_s": 0.05,
                    "max_attempts": 20,
                }
            )
        )
    config = AlertingConfig.model_validate(
        {"group_wait_s": 0, "group_interval_s": 0, "poll_interval_s": 0.02} | alerting
    )
    return settings.model_copy(
        update={"webhooks": endpoints, "webhook_signing_key": SecretStr(KEY), "alerting": config}
    )


def alert_records(alerts: list[Alert]) -> list[tuple[bytes | None, bytes]]:
    return [(a.key.encode(), a.model_dump_json().encode()) for a in alerts]


async def logged(redis: Redis, settings: VigilSettings) -> list[dict[str, Any]]:
    return await AlertLog(redis, settings.app_id, maxlen=10_000).since(0, 10_000)


async def committed_offsets(settings: VigilSettings) -> dict[int, int | None]:
    """The alerting consumer group's committed offset of every partition of the alerts topic."""
    group = consumer_group(settings)
    check = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=group)
    await check.start()
    try:
        return {
            p: await check.committed(TopicPartition(settings.topics.alerts, p))
            for p in range(settings.topics.partitions)
        }
    finally:
        await check.stop()


async def test_consumer_logs_delivers_dead_letters_and_commits_after_redis(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    await ensure_topics(settings, [settings.topics.alerts, settings.topics.dead_letters])
    async with WebhookReceiver(signing_key=KEY) as receiver:
        cfg = configured(settings, receiver)
        alerts = [make_alert(f"{run_id}-k{i}", f"K{i}") for i in range(3)]
        records = [*alert_records(alerts), (b"K0", b"{not an alert")]
        await produce(cfg, cfg.topics.alerts, records)
        stop = asyncio.Event()
        task = asyncio.create_task(consume_alerts(cfg, stop))
        try:
            await wait_until(lambda: len(receiver.accepted) == 3, 30, "deliveries from the topic")
            letters = await read_dead_letters(cfg, 1)
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
    assert receiver.accepted == {f"{a.alert_id}:firing": 1 for a in alerts}
    assert all(r.signature_problem is None for r in receiver.requests)
    assert len(letters) == 1 and letters[0].source == "alerting"
    assert letters[0].original_bytes() == b"{not an alert" and "not an alert" in letters[0].reason
    assert sorted(a["alert_id"] for a in await logged(aredis, cfg)) == sorted(
        a.alert_id for a in alerts
    )
    offsets = await committed_offsets(cfg)
    assert sum(o or 0 for o in offsets.values()) == 4  # every record, after it was handled


async def test_an_alert_produced_twice_reaches_the_receiver_and_the_log_once(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    await ensure_topics(settings, [settings.topics.alerts, settings.topics.dead_letters])
    async with WebhookReceiver() as receiver:
        cfg = configured(settings, receiver)
        firing = [make_alert(f"{run_id}-{i}", f"D{i}") for i in range(5)]
        resolved = make_alert(firing[0].alert_id, "D0", status="resolved")
        once = [*firing, resolved]
        # the same alert id and status twice: once in order, once again after the others
        await produce(cfg, cfg.topics.alerts, alert_records(once + once))
        async with AlertsConsumer(cfg) as consumer:
            stop = asyncio.Event()
            task = asyncio.create_task(consumer.run(stop))
            try:
                await wait_until(
                    lambda: len(set(receiver.accepted_alert_ids())) == 6, 30, "six alerts"
                )
                await asyncio.sleep(0.5)  # a second delivery of anything would arrive now
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
    # a firing and its resolve may share one notification (same group): count alerts in bodies
    delivered = Counter(receiver.accepted_alert_ids())
    assert delivered == Counter({f"{a.alert_id}:{a.status}": 1 for a in once})
    assert all(n == 1 for n in receiver.accepted.values())
    assert len(receiver.requests) == len(receiver.accepted)  # no request was repeated
    entries = Counter((a["alert_id"], a["status"]) for a in await logged(aredis, cfg))
    assert entries == Counter({(a.alert_id, a.status): 1 for a in once})


async def test_alerts_are_logged_when_no_webhook_is_configured(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    await ensure_topics(settings, [settings.topics.alerts, settings.topics.dead_letters])
    cfg = configured(settings, None)
    alerts = [make_alert(f"{run_id}-n{i}", f"N{i}") for i in range(4)]
    await produce(cfg, cfg.topics.alerts, alert_records(alerts))

    async def count() -> int:
        return len(await logged(aredis, cfg))

    stop = asyncio.Event()
    task = asyncio.create_task(consume_alerts(cfg, stop))
    try:
        deadline = time.monotonic() + 30
        while await count() < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert sorted(a["alert_id"] for a in await logged(aredis, cfg)) == sorted(
        a.alert_id for a in alerts
    )


class AlertingProcess(WorkerSubprocess):
    """``vigil alerting run`` in its own process, configured like a deployment."""

    def __init__(self, settings: VigilSettings, log_path: Path) -> None:
        super().__init__(settings, log_path, ("-m", "vigil.cli", "alerting", "run"))


async def test_sigkill_of_vigil_alerting_run_mid_stream_loses_and_duplicates_nothing(
    settings: VigilSettings, aredis: Redis, run_id: str, tmp_path: Path
) -> None:
    """Kill the standalone consumer while it delivers, restart it: every alert reaches the
    receiver (distinct Idempotency-Keys), and the only possible repeats are the requests that
    were in flight at the kill (at most max_concurrency; the receiver dedupes those)."""
    await ensure_topics(settings, [settings.topics.alerts, settings.topics.dead_letters])
    first, second = 40, 20
    async with WebhookReceiver(delay_s=0.05) as receiver:
        cfg = configured(settings, receiver, lease_margin_s=1.0, max_delivery_age_s=600.0)
        max_concurrency = cfg.webhooks[0].max_concurrency
        early = [make_alert(f"{run_id}-e{i:02d}", f"E{i:02d}") for i in range(first)]
        late = [make_alert(f"{run_id}-l{i:02d}", f"L{i:02d}") for i in range(second)]
        await produce(cfg, cfg.topics.alerts, alert_records(early))
        process = AlertingProcess(cfg, tmp_path / "alerting-1.log").start()
        try:
            await wait_until(lambda: len(receiver.accepted) >= 10, 60, "deliveries to begin")
            process.check_alive()
            process.kill()
            assert len(receiver.accepted) < first  # killed mid-stream
        finally:
            process.kill()
        # more alerts, and every early one again, while nobody consumes
        await produce(cfg, cfg.topics.alerts, alert_records(late + early))
        restarted = AlertingProcess(cfg, tmp_path / "alerting-2.log").start()
        try:
            total = first + second
            await wait_until(lambda: len(receiver.accepted) == total, 90, "every alert")
            await asyncio.sleep(cfg.webhooks[0].timeout_s + 1.5)  # leases of the killed one end
            restarted.check_alive()
        finally:
            await asyncio.to_thread(restarted.stop)
    expected = {f"{a.alert_id}:firing" for a in early + late}
    assert set(receiver.accepted) == expected  # none lost, nothing unknown
    repeats = sum(n - 1 for n in receiver.accepted.values())
    assert repeats <= max_concurrency  # only requests in flight at the kill may come twice
    entries = Counter(a["alert_id"] for a in await logged(aredis, cfg))
    assert entries == Counter({a.alert_id: 1 for a in early + late})


# ---- web pages -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("since", "limit", "problem"),
    [
        (None, "abc", "limit"),
        (None, "-5", "limit"),
        (None, "0", "limit"),
        (None, "1.5", "limit"),
        ("abc", None, "since"),
        ("nan", None, "since"),
        ("inf", None, "since"),
    ],
)
def test_alert_query_rejects_bad_parameters(
    since: str | None, limit: str | None, problem: str
) -> None:
    with pytest.raises(AlertQueryError, match=problem):
        parse_query(since, limit, now=1000.0)


def test_alert_query_defaults_and_cap() -> None:
    assert parse_query(None, None, now=5000.0) == (1400.0, 500)
    assert parse_query("12.5", "99999", now=5000.0) == (12.5, 10_000)


async def test_alerting_pages_answer_bad_requests_with_400_json(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    from vigil.alerting.dispatcher import AlertDispatcher

    cfg = configured(settings, None)
    dispatcher = AlertDispatcher(cfg, aredis)
    alert = make_alert(f"{run_id}-w", "W")
    assert await dispatcher.submit(alert)
    app = faust.App(f"{cfg.app_id}-web", broker=f"kafka://{cfg.bootstrap}")  # never started
    add_alerting_pages(app, cfg, aredis)
    runner = aiohttp.web.AppRunner(await app.web.wsgi())
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            listed = await client.get("/alerts", params={"since": "0"})
            assert listed.status_code == 200
            assert [a["alert_id"] for a in listed.json()["alerts"]] == [alert.alert_id]
            for query in ({"limit": "abc"}, {"limit": "-5"}, {"since": "later"}):
                bad = await client.get("/alerts", params=query)
                assert bad.status_code == 400, (query, bad.text)
                assert set(bad.json()) == {"error"}
            not_json = await client.post("/silences", content=b"{nope")
            assert not_json.status_code == 400 and "error" in not_json.json()
            no_duration = await client.post("/silences", json={"matchers": {"key": "W"}})
            assert no_duration.status_code == 400 and "error" in no_duration.json()
            created = await client.post(
                "/silences", json={"matchers": {"key": "W"}, "duration": "1h"}
            )
            assert created.status_code == 201
            silence_id = created.json()["silence"]["id"]
            assert [s["id"] for s in (await client.get("/silences")).json()["silences"]] == [
                silence_id
            ]
            assert (await client.delete(f"/silences/{silence_id}")).status_code == 200
            missing = await client.delete("/silences/nope")
            assert missing.status_code == 404 and "error" in missing.json()
    finally:
        await runner.cleanup()
