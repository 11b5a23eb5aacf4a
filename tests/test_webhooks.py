"""Webhook delivery against real local HTTP receivers, the real Redis and (for dead letters) the
real Kafka: signatures, exactly-once by Idempotency-Key across failures and restarts, dead
letters, circuit breaker (probes, recovery, never-recovering endpoints), retry budget,
concurrency limit, Slack payloads. The alerts-topic path is in test_alerts_consumer.py."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from redis.asyncio import Redis

from tests.kafka_io import read_dead_letters
from tests.webhook_receiver import WebhookReceiver, make_alert, wait_until
from vigil.alerting.circuit import CircuitBreaker, RetryBudget, full_jitter_backoff
from vigil.alerting.delivery import retry_window_s
from vigil.alerting.dispatcher import AlertDispatcher
from vigil.alerting.payloads import endpoint_id, endpoint_label, render_slack
from vigil.alerting.routing import Notification
from vigil.alerting.signing import SIGNATURE_HEADER, sign, signature_problem, verify
from vigil.settings import AlertingConfig, VigilSettings, WebhookEndpoint
from vigil.topics import ensure_topics

KEY = "test-signing-key"


# ---- pure parts ------------------------------------------------------------------------------
def test_signature_verifies_and_rejects_tampering_replay_and_wrong_key() -> None:
    body, idem = b'{"alerts":[1]}', "a1:firing"
    now = 1_700_000_000.0
    header = sign(body, idem, KEY, timestamp=now)
    assert header.startswith("t=1700000000,v1=")
    assert verify(body, idem, header, KEY, tolerance_s=300, now=now + 10)
    assert not verify(body + b" ", idem, header, KEY, now=now)  # tampered body
    assert not verify(body, idem, header, "other-key", now=now)  # wrong key
    assert not verify(body, idem, header, KEY, tolerance_s=300, now=now + 301)  # replayed later
    forged = header.replace("t=1700000000", "t=1700000300")  # fresh stamp, old digest
    assert not verify(body, idem, forged, KEY, now=now + 300)
    assert "does not match" in (signature_problem(body, idem, forged, KEY, now=now + 300) or "")
    assert signature_problem(body, idem, None, KEY) == "no signature header"
    assert signature_problem(body, idem, "garbage", KEY) == "malformed signature header"
    # key rotation: any v1 entry may match
    rotated = f"{header},v1={sign(body, idem, 'old', timestamp=now).split('v1=')[1]}"
    assert verify(body, idem, rotated, "old", now=now) and verify(body, idem, rotated, KEY, now=now)


def test_signature_covers_the_idempotency_key() -> None:
    """A captured body replayed under a fresh Idempotency-Key would pass a receiver's dedupe."""
    body, now = b'{"alerts":[1]}', 1_700_000_000.0
    header = sign(body, "a1:firing", KEY, timestamp=now)
    assert verify(body, "a1:firing", header, KEY, now=now)
    assert not verify(body, "a1:firing-replayed", header, KEY, now=now)
    assert not verify(body, "", header, KEY, now=now)
    problem = signature_problem(body, "a2:firing", header, KEY, now=now)
    assert problem == "signature does not match"


def test_signature_from_the_future_is_rejected_beyond_a_small_skew() -> None:
    body, idem, now = b"{}", "k", 1_700_000_000.0
    assert verify(body, idem, sign(body, idem, KEY, timestamp=now + 30), KEY, now=now)
    ahead = sign(body, idem, KEY, timestamp=now + 31)
    assert not verify(body, idem, ahead, KEY, now=now)
    assert "in the future" in (signature_problem(body, idem, ahead, KEY, now=now) or "")
    assert verify(body, idem, ahead, KEY, max_skew_s=60, now=now)
    # the past tolerance stays 300 s
    assert verify(body, idem, sign(body, idem, KEY, timestamp=now - 300), KEY, now=now)
    assert not verify(body, idem, sign(body, idem, KEY, timestamp=now - 301), KEY, now=now)


def test_full_jitter_backoff_stays_within_the_exponential_ceiling() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(2.0, 0.1 * 2 ** (attempt - 1))
        samples = [full_jitter_backoff(attempt, 0.1, 2.0, rng) for _ in range(200)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.8 * ceiling and min(samples) < 0.2 * ceiling  # jitter is full
    assert full_jitter_backoff(10_000, 0.1, 2.0, rng) <= 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_circuit_breaker_opens_half_opens_with_one_probe_and_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10.0, clock=clock)
    for _ in range(2):
        assert breaker.try_acquire()
        breaker.record_failure()
    assert breaker.state == "closed" and breaker.permits(4) == 4
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.try_acquire() and breaker.permits(4) == 0
    assert breaker.retry_after() == pytest.approx(10.0)
    clock.now += 10.0
    assert breaker.state == "half_open" and breaker.permits(4) == 1
    assert breaker.try_acquire() and not breaker.try_acquire()  # one probe only
    breaker.record_failure()  # the probe failed: open again for a full cool-down
    assert breaker.state == "open"
    clock.now += 10.0
    assert breaker.try_acquire()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.permits(4) == 4


def test_half_open_admits_a_bounded_number_of_probes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=5.0, clock=clock, half_open_probes=2)
    breaker.record_failure()
    clock.now += 5.0
    assert breaker.permits(10) == 2
    assert breaker.try_acquire() and breaker.try_acquire() and not breaker.try_acquire()
    breaker.release()  # one probe never reached the endpoint
    assert breaker.permits(10) == 1
    assert breaker.record_success() is True  # recovered: the caller drains the backlog
    assert breaker.record_success() is False and breaker.permits(10) == 10


def test_retry_window_sums_backoff_ceilings_and_timeouts() -> None:
    endpoint = WebhookEndpoint.model_validate(
        {"url": "http://x/h", "max_attempts": 4, "backoff_base_s": 1, "backoff_max_s": 3,
         "timeout_s": 2}
    )  # fmt: skip
    assert retry_window_s(endpoint) == pytest.approx(1 + 2 + 3 + 4 * 2)


def test_retry_budget_allows_per_minute_and_refills() -> None:
    clock = FakeClock()
    budget = RetryBudget(per_minute=6, clock=clock)  # one token every 10 s
    assert sum(budget.try_acquire() for _ in range(10)) == 6
    assert budget.wait_s() == pytest.approx(10.0)
    clock.now += 25.0
    assert sum(budget.try_acquire() for _ in range(10)) == 2


def test_endpoint_label_keeps_secrets_out_of_metrics() -> None:
    def label_of(url: str, **extra: str) -> str:
        return endpoint_label(WebhookEndpoint.model_validate({"url": url} | extra))

    label = label_of("https://hooks.slack.com/services/T0001/B0001/abcdefghijklmnopqrstuvwx")
    assert "abcdefghijklmnopqrstuvwx" not in label and label.startswith("https://hooks.slack.com/")
    with_token = label_of("https://user:pw@example.com/hook?token=s3cret")
    assert "s3cret" not in with_token and "pw" not in with_token
    assert label_of("http://example.com/hook") == "http://example.com/hook"
    assert label_of("http://x/h", name="pager") == "pager"


def test_slack_payload_has_text_and_blocks_per_alert() -> None:
    alerts = [make_alert("a1", "AAPL"), make_alert("a2", "MSFT", status="resolved")]
    payload = render_slack(Notification("group-x", "key=AAPL", alerts), alerts)
    assert set(payload) == {"text", "blocks"}
    assert "1 firing" in payload["text"] and "1 resolved" in payload["text"]
    assert payload["blocks"][0]["type"] == "header"
    sections = [b for b in payload["blocks"] if b["type"] == "section"]
    assert len(sections) == 2
    assert "*AAPL*" in sections[0]["text"]["text"] and sections[0]["text"]["type"] == "mrkdwn"
    assert "RESOLVED" in sections[1]["text"]["text"]
    many = [make_alert(f"m{i}", f"K{i}") for i in range(25)]
    big = render_slack(Notification("group-y", "all", many), many)
    assert len(big["blocks"]) == 1 + 20 + 1 and "5 more" in json.dumps(big["blocks"][-1])


# ---- integration: real HTTP, real Redis ----------------------------------------------------------
@pytest.fixture
async def aredis(services: VigilSettings) -> AsyncIterator[Redis]:
    client = Redis.from_url(services.redis)
    yield client
    await client.aclose()


def with_webhooks(
    settings: VigilSettings, *endpoints: WebhookEndpoint, **alerting: Any
) -> VigilSettings:
    config = AlertingConfig(group_wait_s=0, group_interval_s=0, poll_interval_s=0.02, **alerting)
    return settings.model_copy(
        update={
            "webhooks": list(endpoints),
            "webhook_signing_key": SecretStr(KEY),
            "alerting": config,
        }
    )


def endpoint_for(receiver: WebhookReceiver, name: str, **options: Any) -> WebhookEndpoint:
    defaults: dict[str, Any] = {
        "min_severity": "info",
        "timeout_s": 0.5,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "max_attempts": 20,
        "failure_threshold": 50,
        "cooldown_s": 0.2,
    }
    return WebhookEndpoint.model_validate({"url": receiver.url, "name": name} | defaults | options)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_each_alert_is_delivered_once_signed_and_resolved_separately(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    async with WebhookReceiver(signing_key=KEY) as receiver:
        name = f"ok-{run_id}"
        cfg = with_webhooks(settings, endpoint_for(receiver, name))
        dispatcher = AlertDispatcher(cfg, aredis)
        await dispatcher.start()
        try:
            alerts = [make_alert(f"{run_id}-{i}", f"K{i}") for i in range(4)]
            assert all([await dispatcher.submit(a) for a in alerts])
            assert not await dispatcher.submit(
                alerts[0]
            )  # the same alert again: no second delivery
            await wait_until(lambda: len(receiver.accepted) == 4, what="4 deliveries")
            resolved = make_alert(alerts[0].alert_id, "K0", status="resolved")
            assert await dispatcher.submit(resolved)
            await wait_until(lambda: len(receiver.accepted) == 5, what="the resolved delivery")
            await asyncio.sleep(0.2)  # anything extra would arrive now
        finally:
            await dispatcher.stop()
    expected = {f"{a.alert_id}:firing" for a in alerts} | {f"{alerts[0].alert_id}:resolved"}
    assert receiver.accepted == dict.fromkeys(expected, 1)
    assert len(receiver.requests) == 5
    assert all(r.signature_problem is None for r in receiver.requests)
    first = receiver.requests[0]
    assert first.headers["Content-Type"] == "application/json"
    body = first.json()
    assert body["version"] == 1 and body["status"] == "firing"
    assert body["alerts"][0]["idempotency_key"] == first.idempotency_key
    assert body["alerts"][0]["provenance"]["model_version"] == "v3"
    last = receiver.requests[-1].json()
    assert last["status"] == "resolved" and last["alerts"][0]["status"] == "resolved"
    # the receiver-side check rejects a tampered body and a replay of a captured request
    header = first.headers[SIGNATURE_HEADER]
    assert verify(first.body, first.idempotency_key, header, KEY)
    assert not verify(first.body.replace(b"K", b"X"), first.idempotency_key, header, KEY)
    assert not verify(first.body, first.idempotency_key, header, KEY, now=time.time() + 600)
    assert not verify(first.body, first.idempotency_key + "x", header, KEY)
    assert metric("vigil_webhook_deliveries_total", endpoint=name, outcome="delivered") == 5


async def test_receiver_that_comes_back_gets_every_alert_exactly_once(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    async with WebhookReceiver(fail_first=5) as receiver:
        name = f"back-{run_id}"
        cfg = with_webhooks(settings, endpoint_for(receiver, name))
        dispatcher = AlertDispatcher(cfg, aredis)
        await dispatcher.start()
        try:
            for i in range(3):
                await dispatcher.submit(make_alert(f"{run_id}-{i}", f"K{i}"))
            await wait_until(lambda: len(receiver.accepted) == 3, what="3 deliveries")
            await asyncio.sleep(0.2)
        finally:
            await dispatcher.stop()
    assert sorted(receiver.accepted.values()) == [1, 1, 1]
    assert sum(r.status == 500 for r in receiver.requests) == 5
    assert metric("vigil_webhook_deliveries_total", endpoint=name, outcome="failed") == 5
    retries = [r for r in receiver.requests if r.headers.get("X-Vigil-Attempt") != "1"]
    assert retries and all(r.idempotency_key in receiver.accepted for r in retries)


async def test_receiver_that_hangs_past_the_timeout_is_retried(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    async with WebhookReceiver(hang_first=1, hang_s=1.5) as receiver:
        cfg = with_webhooks(settings, endpoint_for(receiver, f"hang-{run_id}", timeout_s=0.25))
        dispatcher = AlertDispatcher(cfg, aredis)
        await dispatcher.start()
        try:
            await dispatcher.submit(make_alert(f"{run_id}-h", "K"))
            await wait_until(lambda: len(receiver.accepted) == 1, what="delivery after the hang")
        finally:
            await dispatcher.stop()
        record = await dispatcher.queue.load(f"{run_id}-h:firing@{endpoint_id(cfg.webhooks[0])}")
    assert receiver.accepted == {f"{run_id}-h:firing": 1}
    assert receiver.requests[0].status == 0  # the hung request never got an answer out in time
    assert record is not None and record.status == "delivered" and record.attempts == 2


async def test_restart_in_the_middle_of_retries_neither_resends_nor_drops(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    async with WebhookReceiver() as receiver:
        endpoint = endpoint_for(
            receiver, f"restart-{run_id}", backoff_base_s=0.4, backoff_max_s=0.4, max_attempts=50
        )
        cfg = with_webhooks(settings, endpoint)
        first = AlertDispatcher(cfg, aredis)
        await first.start()
        early = [make_alert(f"{run_id}-early{i}", f"E{i}") for i in range(3)]
        for alert in early:
            await first.submit(alert)
        await wait_until(lambda: len(receiver.accepted) == 3, what="early deliveries")
        receiver.mode = "fail"  # the receiver goes down: the next alerts wait in back-off
        late = [make_alert(f"{run_id}-late{i}", f"L{i}") for i in range(4)]
        for alert in late:
            await first.submit(alert)
        await wait_until(lambda: len(receiver.requests) >= 3 + 4, what="failed first attempts")
        await first.stop()
        eid = endpoint_id(endpoint)
        assert await first.queue.count_pending(eid) == 4  # pending in Redis, with their attempts
        for alert in late:
            record = await first.queue.load(f"{alert.alert_id}:firing@{eid}")
            assert record is not None and record.status == "pending" and record.attempts >= 1
        receiver.mode = "accept"
        second = AlertDispatcher(cfg, aredis)
        await second.start()
        try:
            await wait_until(lambda: len(receiver.accepted) == 7, what="pending deliveries")
            await asyncio.sleep(0.6)  # a resend of anything would show up by now
            for alert in early:  # submitting a delivered alert again changes nothing
                assert not await second.submit(alert)
            await asyncio.sleep(0.1)
        finally:
            await second.stop()
        assert await second.queue.count_pending(eid) == 0
    expected = {f"{a.alert_id}:firing" for a in early + late}
    assert receiver.accepted == dict.fromkeys(expected, 1)


async def test_dead_endpoint_sends_to_dead_letter_after_max_attempts(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    await ensure_topics(settings, [settings.topics.dead_letters])
    async with WebhookReceiver(mode="fail") as dead, WebhookReceiver(mode="reject") as strict:
        cfg = with_webhooks(
            settings,
            endpoint_for(dead, f"dead-{run_id}", max_attempts=3),
            endpoint_for(strict, f"strict-{run_id}", max_attempts=3),
        )
        dispatcher = AlertDispatcher(cfg, aredis)
        await dispatcher.start()
        try:
            await dispatcher.submit(make_alert(f"{run_id}-d", "DEAD"))
            await wait_until(lambda: len(dead.requests) == 3 and len(strict.requests) == 1)
            letters = await read_dead_letters(cfg, 2)
            await asyncio.sleep(0.2)
        finally:
            await dispatcher.stop()
    assert len(dead.requests) == 3  # max_attempts, then no more
    assert len(strict.requests) == 1  # a 4xx is not retried
    by_source = {letter.source: letter for letter in letters}
    gave_up = by_source[f"webhook:dead-{run_id}"]
    assert "after 3 attempt(s)" in gave_up.reason and "HTTP 500" in gave_up.reason
    assert gave_up.key == "key=DEAD" and gave_up.topic == cfg.topics.alerts
    assert json.loads(gave_up.original_bytes())["alerts"][0]["alert_id"] == f"{run_id}-d"
    refused = by_source[f"webhook:strict-{run_id}"]
    assert "not retried" in refused.reason and "HTTP 400" in refused.reason
    record = await dispatcher.queue.load(f"{run_id}-d:firing@{endpoint_id(cfg.webhooks[0])}")
    assert record is not None and record.status == "dead" and record.attempts == 3
    assert metric("vigil_webhook_deliveries_total", endpoint=f"dead-{run_id}", outcome="dead") == 1


async def test_circuit_opens_after_failures_and_a_single_probe_closes_it(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    async with WebhookReceiver(fail_first=2, delay_s=0.05) as receiver:
        endpoint = endpoint_for(
            receiver, f"circuit-{run_id}", failure_threshold=2, cooldown_s=0.6, max_concurrency=4,
            backoff_base_s=0.001, backoff_max_s=0.001,
        )  # fmt: skip
        dispatcher = AlertDispatcher(with_webhooks(settings, endpoint), aredis)
        delivery = dispatcher.endpoint(receiver.url)
        await dispatcher.start()
        try:
            await dispatcher.submit(make_alert(f"{run_id}-c0", "C0"))
            await wait_until(lambda: len(receiver.requests) == 2, what="two failures")
            await wait_until(lambda: delivery.breaker.state == "open", 2, "the circuit to open")
            for i in range(1, 4):  # more alerts while open: none may be attempted yet
                await dispatcher.submit(make_alert(f"{run_id}-c{i}", f"C{i}"))
            await asyncio.sleep(0.3)
            assert len(receiver.requests) == 2 and delivery.breaker.state == "open"
            await wait_until(lambda: len(receiver.accepted) == 4, what="deliveries after the probe")
            assert delivery.breaker.state == "closed"
        finally:
            await dispatcher.stop()
    probe, after = receiver.requests[2], receiver.requests[3:]
    assert probe.started - receiver.requests[1].ended >= 0.5  # waited out the cool-down
    assert all(r.started >= probe.ended for r in after)  # half-open: the probe went alone
    assert sorted(receiver.accepted.values()) == [1, 1, 1, 1]


async def test_a_receiver_that_recovers_gets_the_whole_backlog_probe_first_oldest(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    """While down: the circuit opens, half-open probes carry the oldest notification. Once a
    probe gets through, the backlog drains at once: the (60 s) back-offs earned while the endpoint
    was down and the small retry budget (2 a minute) no longer hold it back."""
    n = 30
    async with WebhookReceiver(mode="fail") as receiver:
        endpoint = endpoint_for(
            receiver, f"recover-{run_id}", failure_threshold=6, cooldown_s=0.3, max_concurrency=6,
            max_attempts=100, retries_per_minute=2, backoff_base_s=60.0, backoff_max_s=60.0,
        )  # fmt: skip
        cfg = with_webhooks(settings, endpoint, max_delivery_age_s=3600.0)
        dispatcher = AlertDispatcher(cfg, aredis)
        delivery = dispatcher.endpoint(receiver.url)
        await dispatcher.start()
        try:
            alerts = [make_alert(f"{run_id}-{i:02d}", f"K{i:02d}") for i in range(n)]
            for alert in alerts:
                await dispatcher.submit(alert)
            await wait_until(lambda: delivery.breaker.state != "closed", what="the circuit open")
            seen = len(receiver.requests)  # up to 5 attempts from before it opened may follow
            await wait_until(lambda: len(receiver.requests) >= seen + 7, 10, "failed probes")
            down = len(receiver.requests)
            receiver.mode = "accept"
            await wait_until(lambda: len(receiver.accepted) == n, 15, "the backlog delivered")
            await asyncio.sleep(0.2)  # a duplicate would show up by now
        finally:
            await dispatcher.stop()
        pending = await dispatcher.queue.count_pending(delivery.id)
    oldest = f"{alerts[0].alert_id}:firing"
    probes = receiver.requests[down - 2 : down]
    assert all(r.idempotency_key == oldest and r.status == 500 for r in probes)
    after = receiver.requests[down:]
    assert after[0].idempotency_key == oldest  # the probe that closed the circuit
    assert len(after) == n and all(r.status == 200 for r in after)
    assert receiver.accepted == {f"{a.alert_id}:firing": 1 for a in alerts}
    assert pending == 0


async def test_an_endpoint_that_never_recovers_dead_letters_every_notification(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    """With the circuit open most of the time, notifications are given up by age (the retry
    window) instead of waiting for attempts that only probes would make."""
    await ensure_topics(settings, [settings.topics.dead_letters])
    n, max_attempts = 23, 4
    name = f"never-{run_id}"
    async with WebhookReceiver(mode="fail") as receiver:
        endpoint = endpoint_for(
            receiver, name, failure_threshold=3, cooldown_s=0.3, max_concurrency=4,
            max_attempts=max_attempts, backoff_base_s=0.05, backoff_max_s=0.2,
        )  # fmt: skip
        cfg = with_webhooks(settings, endpoint)
        dispatcher = AlertDispatcher(cfg, aredis)
        await dispatcher.start()
        try:
            alerts = [make_alert(f"{run_id}-{i:02d}", f"N{i:02d}") for i in range(n)]
            for alert in alerts:
                await dispatcher.submit(alert)
            letters = await read_dead_letters(cfg, n)
            await asyncio.sleep(0.3)  # a second dead letter or a late attempt would land now
            letters = await read_dead_letters(cfg, n + 1, timeout_s=1.0)
        finally:
            await dispatcher.stop()
        pending = await dispatcher.queue.count_pending(endpoint_id(endpoint))
    lettered = [json.loads(letter.original_bytes())["alerts"][0]["alert_id"] for letter in letters]
    assert sorted(lettered) == sorted(a.alert_id for a in alerts)  # each one, once
    assert all(letter.source == f"webhook:{name}" for letter in letters)
    assert pending == 0
    per_key: dict[str, int] = {}
    for request in receiver.requests:
        per_key[request.idempotency_key] = per_key.get(request.idempotency_key, 0) + 1
    assert max(per_key.values()) <= max_attempts
    assert len(receiver.requests) < n * max_attempts  # the breaker spared the endpoint
    assert metric("vigil_webhook_deliveries_total", endpoint=name, outcome="dead") == n


async def test_retry_budget_throttles_retries_and_counts_them(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    name = f"budget-{run_id}"
    async with WebhookReceiver(mode="fail") as receiver:
        endpoint = endpoint_for(receiver, name, retries_per_minute=2, max_attempts=10)
        dispatcher = AlertDispatcher(with_webhooks(settings, endpoint), aredis)
        await dispatcher.start()
        try:
            for i in range(5):
                await dispatcher.submit(make_alert(f"{run_id}-b{i}", f"B{i}"))
            await wait_until(
                lambda: metric("vigil_webhook_retries_throttled_total", endpoint=name) >= 3,
                what="throttled retries",
            )
            await asyncio.sleep(0.5)
        finally:
            await dispatcher.stop()
        pending = await dispatcher.queue.count_pending(endpoint_id(endpoint))
    # 5 first attempts + at most the 2-retry burst (refill is 1 per 30 s); the rest wait in Redis
    assert 5 <= len(receiver.requests) <= 7
    assert pending == 5  # nothing was dropped: all still pending, retried when the budget allows


async def test_per_endpoint_concurrency_is_limited(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    async with WebhookReceiver(delay_s=0.15) as receiver:
        endpoint = endpoint_for(receiver, f"conc-{run_id}", max_concurrency=2)
        dispatcher = AlertDispatcher(with_webhooks(settings, endpoint), aredis)
        await dispatcher.start()
        try:
            for i in range(6):
                await dispatcher.submit(make_alert(f"{run_id}-p{i}", f"P{i}"))
            await wait_until(lambda: len(receiver.accepted) == 6, what="6 deliveries")
        finally:
            await dispatcher.stop()
    assert receiver.max_in_flight == 2


async def test_routing_by_severity_and_key_pattern_and_slack_format(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    async with WebhookReceiver() as critical_only, WebhookReceiver() as slack:
        cfg = with_webhooks(
            settings,
            endpoint_for(critical_only, f"crit-{run_id}", min_severity="critical"),
            endpoint_for(slack, f"slack-{run_id}", key_pattern="sensor-*", format="slack"),
        )
        dispatcher = AlertDispatcher(cfg, aredis)
        await dispatcher.start()
        try:
            await dispatcher.submit(make_alert(f"{run_id}-1", "sensor-1", severity="warning"))
            await dispatcher.submit(make_alert(f"{run_id}-2", "AAPL", severity="critical"))
            await dispatcher.submit(make_alert(f"{run_id}-3", "sensor-2", severity="critical"))
            await wait_until(lambda: len(critical_only.accepted) == 2 and len(slack.accepted) == 2)
            await asyncio.sleep(0.2)
        finally:
            await dispatcher.stop()
    assert set(critical_only.accepted) == {f"{run_id}-2:firing", f"{run_id}-3:firing"}
    assert set(slack.accepted) == {f"{run_id}-1:firing", f"{run_id}-3:firing"}
    payloads = [r.json() for r in slack.requests]
    assert all(set(p) == {"text", "blocks"} for p in payloads)
    assert any("sensor-1" in json.dumps(p["blocks"]) for p in payloads)


async def test_a_claim_racing_a_finishing_attempt_does_not_stall_the_retry(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    """The pump may claim a delivery whose attempt has written its retry time but not yet left
    the in-flight set; the claim pushes it a lease (30 s) ahead unless the attempt undoes it."""
    async with WebhookReceiver() as receiver:
        endpoint = endpoint_for(receiver, f"race-{run_id}")
        dispatcher = AlertDispatcher(with_webhooks(settings, endpoint), aredis)
        delivery, queue = dispatcher.endpoint(receiver.url), dispatcher.queue
        alert = make_alert(f"{run_id}-r", "R")
        notification = Notification(f"{alert.alert_id}:firing", "key=R", [alert])
        assert await queue.enqueue(delivery.id, notification, b"{}", time.time())
        did = f"{notification.notification_id}@{delivery.id}"
        finishing = asyncio.create_task(asyncio.sleep(5))  # stands in for the attempt's task
        delivery._inflight[did] = finishing
        record = await queue.load(did)
        assert record is not None
        retry_at = time.time() - 0.001  # a tiny back-off: due at once
        await queue.record_retry(record, 1, retry_at, "HTTP 500")  # the attempt's last write
        await delivery._claim_and_start()  # the stray claim: skipped, but its lease was set
        leased = await aredis.zscore(queue.lease_key(delivery.id), did)
        assert leased is not None and leased > time.time() + 20
        await delivery._settle(did)  # the attempt leaves the in-flight set
        finishing.cancel()
        assert await aredis.zscore(queue.lease_key(delivery.id), did) is None
        assert await aredis.zscore(queue.due_key(delivery.id), did) == pytest.approx(
            retry_at, abs=1e-3
        )
        assert did not in delivery._inflight


def test_alerting_status_shows_pending_per_endpoint(settings: VigilSettings) -> None:
    from typer.testing import CliRunner

    from vigil.alerting.cli import alerting_app, webhooks_alias
    from vigil.alerting.delivery_queue import DeliveryQueue

    endpoint = WebhookEndpoint.model_validate({"url": "http://127.0.0.1:9/hook", "name": "cli"})
    alert = make_alert("cli-1", "K")

    async def enqueue() -> None:
        redis = Redis.from_url(settings.redis)
        try:
            queue = DeliveryQueue(redis, settings.app_id, retention_s=60)
            note = Notification("cli-1:firing", "key=K", [alert])
            await queue.enqueue(endpoint_id(endpoint), note, b"{}", time.time())
        finally:
            await redis.aclose()

    asyncio.run(enqueue())
    runner = CliRunner()
    env = {"VIGIL_APP_ID": settings.app_id, "VIGIL_WEBHOOKS": json.dumps([endpoint.model_dump()])}
    for app, args in ((alerting_app, ["status"]), (webhooks_alias, ["status"])):
        status = runner.invoke(app, args, env=env)
        assert status.exit_code == 0, status.output
        assert status.output.split() == ["1", "pending", "cli"]
    unconfigured = runner.invoke(alerting_app, ["status"], env=env | {"VIGIL_WEBHOOKS": "[]"})
    assert unconfigured.exit_code == 0 and "no webhooks configured" in unconfigured.output
