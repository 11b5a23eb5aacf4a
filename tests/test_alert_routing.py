"""Alertmanager-style routing: grouping windows, resolved notifications, inhibition (a MARKET halt
mutes the tickers), silences (Redis, web handlers, CLI). Pure rules first, then the real Redis
and real HTTP receivers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from typer.testing import CliRunner

from tests.webhook_receiver import WebhookReceiver, make_alert, wait_until
from vigil.alerting.dispatcher import AlertDispatcher
from vigil.alerting.routing import group_key, inhibiting_alert, route
from vigil.alerting.silences import Silence, SilenceRequestError, SilenceStore, parse_duration
from vigil.settings import AlertingConfig, AlertMatcher, InhibitRule, VigilSettings, WebhookEndpoint

MARKET_HALT = InhibitRule(
    source_match=AlertMatcher(key="MARKET"), target_match=AlertMatcher(key="*"), equal=["group"]
)


# ---- pure rules ------------------------------------------------------------------------------
def test_group_key_follows_group_by() -> None:
    alert = make_alert("a", "AAPL", severity="warning", group="stocks")
    assert group_key(alert, ["key"]) == "key=AAPL"
    assert group_key(alert, ["group", "severity"]) == "group=stocks,severity=warning"
    assert group_key(alert, []) == "all"


def test_market_alert_inhibits_tickers_of_its_group_only_while_firing() -> None:
    market = make_alert("m", "MARKET", group="stocks")
    aapl = make_alert("a", "AAPL", group="stocks")
    btc = make_alert("b", "BTC", group="crypto")
    assert inhibiting_alert(aapl, [market], [MARKET_HALT]) == market
    assert inhibiting_alert(btc, [market], [MARKET_HALT]) is None  # equal=["group"] differs
    assert inhibiting_alert(market, [market], [MARKET_HALT]) is None  # never inhibits itself
    other_market = make_alert("m2", "MARKET", group="stocks")
    assert inhibiting_alert(other_market, [market], [MARKET_HALT]) == market
    ended = make_alert("m", "MARKET", status="resolved", group="stocks")
    assert inhibiting_alert(aapl, [ended], [MARKET_HALT]) is None
    assert inhibiting_alert(aapl, [market], []) is None


def test_route_mutes_firing_alerts_and_matches_resolves_to_their_firing() -> None:
    now = time.time()
    silence = Silence(matchers=AlertMatcher(key="AAPL"), starts_at=now - 1, ends_at=now + 60)
    later = Silence(matchers=AlertMatcher(key="MSFT"), starts_at=now + 30, ends_at=now + 60)
    alerts = [
        make_alert("a", "AAPL"),
        make_alert("m", "MSFT"),
        make_alert("x", "AAPL", status="resolved"),  # its firing went out before the silence
        make_alert("y", "AAPL", status="resolved"),  # its firing was muted
    ]
    decision = route(
        alerts, now=now, silences=[silence, later], firing=[], rules=[], firing_suppressed={"y"}
    )
    assert [a.alert_id for a in decision.send] == ["m", "x"]
    reasons = {a.alert_id: why for a, why in decision.suppressed}
    assert reasons["a"] == f"silenced by {silence.id}"
    assert "its firing notification was suppressed" in reasons["y"]


def test_silence_states_and_glob_matchers() -> None:
    silence = Silence(
        matchers=AlertMatcher(key="sensor-*", severity="crit*"), starts_at=100.0, ends_at=200.0
    )
    assert [silence.state(t) for t in (99.0, 100.0, 199.0, 200.0)] == [
        "pending", "active", "active", "expired"
    ]  # fmt: skip
    assert silence.mutes(make_alert("1", "sensor-7", severity="critical"), 150.0)
    assert not silence.mutes(make_alert("2", "sensor-7", severity="warning"), 150.0)
    assert not silence.mutes(make_alert("3", "AAPL", severity="critical"), 150.0)
    assert not silence.mutes(make_alert("4", "sensor-7", severity="critical"), 250.0)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("0.5", 0.5)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "1h junk", "-5m", "0", "0s"])
def test_parse_duration_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_matchers_reject_unknown_fields() -> None:
    with pytest.raises(ValueError, match="keys"):  # a typo must not become "match everything"
        AlertMatcher.model_validate({"keys": "AAPL"})


# ---- integration -----------------------------------------------------------------------------
@pytest.fixture
async def aredis(services: VigilSettings) -> AsyncIterator[Redis]:
    client = Redis.from_url(services.redis)
    yield client
    await client.aclose()


def routed_settings(
    settings: VigilSettings, receiver: WebhookReceiver, **alerting: Any
) -> VigilSettings:
    endpoint = WebhookEndpoint.model_validate(
        {"url": receiver.url, "min_severity": "info", "timeout_s": 0.5, "backoff_base_s": 0.01,
         "backoff_max_s": 0.05, "name": f"routing-{settings.app_id}"}
    )  # fmt: skip
    config = AlertingConfig(
        poll_interval_s=0.02, **({"group_wait_s": 0, "group_interval_s": 0} | alerting)
    )
    return settings.model_copy(
        update={"webhooks": [endpoint], "webhook_signing_key": SecretStr("k"), "alerting": config}
    )


async def test_alerts_of_one_key_within_the_window_are_one_notification(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    async with WebhookReceiver() as receiver:
        cfg = routed_settings(settings, receiver, group_wait_s=0.3, group_interval_s=0.8)
        dispatcher = AlertDispatcher(cfg, aredis)
        await dispatcher.start()
        try:
            burst = [make_alert(f"{run_id}-a{i}", "AAPL") for i in range(3)]
            for alert in burst:
                await dispatcher.submit(alert)
            await dispatcher.submit(make_alert(f"{run_id}-m", "MSFT"))
            assert not await dispatcher.submit(burst[1])  # a resend is harmless
            await wait_until(lambda: len(receiver.requests) == 2, what="two notifications")
            later = make_alert(f"{run_id}-a9", "AAPL")
            await dispatcher.submit(later)  # the AAPL group was just notified: waits an interval
            await dispatcher.submit(make_alert(burst[0].alert_id, "AAPL", status="resolved"))
            await wait_until(lambda: len(receiver.requests) == 3, what="the follow-up", timeout_s=5)
            await asyncio.sleep(0.3)
        finally:
            await dispatcher.stop()
    by_group = {r.json()["group_key"]: r for r in receiver.requests[:2]}
    aapl, msft = by_group["key=AAPL"].json(), by_group["key=MSFT"].json()
    assert sorted(a["alert_id"] for a in aapl["alerts"]) == sorted(a.alert_id for a in burst)
    assert by_group["key=AAPL"].idempotency_key.startswith("group-")
    assert [a["alert_id"] for a in msft["alerts"]] == [f"{run_id}-m"]
    assert by_group["key=MSFT"].idempotency_key == f"{run_id}-m:firing"
    follow_up = receiver.requests[2]
    assert {a["idempotency_key"] for a in follow_up.json()["alerts"]} == {
        f"{later.alert_id}:firing", f"{burst[0].alert_id}:resolved"
    }  # fmt: skip
    assert follow_up.started - by_group["key=AAPL"].started >= 0.7  # group_interval, not wait
    assert len(receiver.requests) == 3
    assert all(n == 1 for n in receiver.accepted.values())


async def test_market_halt_inhibits_ticker_alerts_while_it_fires(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    async with WebhookReceiver() as receiver:
        cfg = routed_settings(settings, receiver, group_wait_s=0.15, inhibit_rules=[MARKET_HALT])
        dispatcher = AlertDispatcher(cfg, aredis)
        await dispatcher.start()
        try:
            await dispatcher.submit(make_alert(f"{run_id}-halt", "MARKET", group="stocks"))
            await dispatcher.submit(make_alert(f"{run_id}-aapl", "AAPL", group="stocks"))
            await dispatcher.submit(make_alert(f"{run_id}-btc", "BTC", group="crypto"))
            await wait_until(lambda: len(receiver.accepted) == 2, what="MARKET and BTC")
            await asyncio.sleep(0.3)  # AAPL would have arrived by now
            assert set(receiver.accepted) == {f"{run_id}-halt:firing", f"{run_id}-btc:firing"}
            await dispatcher.submit(make_alert(f"{run_id}-halt", "MARKET", status="resolved"))
            await dispatcher.submit(make_alert(f"{run_id}-aapl", "AAPL", status="resolved"))
            await dispatcher.submit(make_alert(f"{run_id}-aapl2", "AAPL", group="stocks"))
            await wait_until(lambda: len(receiver.accepted) == 4, what="after the halt ended")
            await asyncio.sleep(0.3)
        finally:
            await dispatcher.stop()
    sent = {
        a
        for body in receiver.accepted_bodies()
        for a in (x["idempotency_key"] for x in body["alerts"])
    }
    assert sent == {
        f"{run_id}-halt:firing",
        f"{run_id}-btc:firing",
        f"{run_id}-halt:resolved",
        f"{run_id}-aapl2:firing",
    }  # fmt: skip  -- the muted AAPL incident's resolve is not sent either


async def test_silence_stops_delivery_and_expiry_restores_it(
    settings: VigilSettings, aredis: Redis, run_id: str
) -> None:
    async with WebhookReceiver() as receiver:
        cfg = routed_settings(settings, receiver)
        store = SilenceStore(aredis, cfg.app_id)
        silence = await store.create(AlertMatcher(key="AAPL"), duration_s=60, comment="earnings")
        await store.create(
            AlertMatcher(key="MSFT"), duration_s=60, starts_at=time.time() + 30, comment="later"
        )
        dispatcher = AlertDispatcher(cfg, aredis)
        await dispatcher.start()
        try:
            await dispatcher.submit(make_alert(f"{run_id}-s1", "AAPL"))
            await dispatcher.submit(make_alert(f"{run_id}-m1", "MSFT"))  # silence not started
            await wait_until(lambda: len(receiver.accepted) == 1, what="MSFT")
            await asyncio.sleep(0.3)
            assert set(receiver.accepted) == {f"{run_id}-m1:firing"}
            await store.expire(silence.id)
            await dispatcher.submit(make_alert(f"{run_id}-s2", "AAPL"))
            await wait_until(lambda: len(receiver.accepted) == 2, what="AAPL after expiry")
        finally:
            await dispatcher.stop()
    assert set(receiver.accepted) == {f"{run_id}-m1:firing", f"{run_id}-s2:firing"}
    assert await store.active() == []


async def test_silence_web_handlers(settings: VigilSettings, aredis: Redis) -> None:
    store = SilenceStore(aredis, settings.app_id)
    created = await store.handle_create(
        {"matchers": {"key": "AAPL", "severity": "critical"}, "duration": "2h", "comment": "halt",
         "created_by": "ops"}
    )  # fmt: skip
    silence = created["silence"]
    assert silence["state"] == "active" and silence["matchers"]["key"] == "AAPL"
    assert silence["ends_at"] - silence["starts_at"] == pytest.approx(7200)
    listed = await store.handle_list({})
    assert [s["id"] for s in listed["silences"]] == [silence["id"]]
    expired = await store.handle_expire(silence["id"])
    assert expired["silence"]["state"] == "expired"
    assert (await store.handle_list({}))["silences"] == []
    assert [s["id"] for s in (await store.handle_list({"state": "all"}))["silences"]] == [
        silence["id"]
    ]
    bad_bodies: list[Any] = [
        {"matchers": {"key": "AAPL"}},  # no duration or end
        {"matchers": {"keys": "AAPL"}, "duration": "1h"},  # unknown matcher field
        {"matchers": {}, "duration": "soon"},
        {"matchers": {}, "duration": "1h", "colour": "red"},
        {"matchers": {}, "ends_at": time.time() - 10},
        ["not", "an", "object"],
    ]
    for body in bad_bodies:
        with pytest.raises(SilenceRequestError) as err:
            await store.handle_create(body)
        assert err.value.status == 400
    with pytest.raises(SilenceRequestError) as missing:
        await store.handle_expire("no-such-id")
    assert missing.value.status == 404
    with pytest.raises(SilenceRequestError):
        await store.handle_list({"state": "sleeping"})


def test_silence_cli_add_list_expire(settings: VigilSettings, run_id: str) -> None:
    from vigil.cli import app

    runner = CliRunner()
    env = {"VIGIL_APP_ID": settings.app_id}
    added = runner.invoke(
        app, ["alerts", "silence", "add", "--key", "AAPL", "--duration", "1h", "--comment",
              f"earnings {run_id}", "--created-by", "tester"], env=env,
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    silence_id = added.output.strip()
    listed = runner.invoke(app, ["alerts", "silence", "list"], env=env)
    assert listed.exit_code == 0 and silence_id in listed.output
    assert f"earnings {run_id}" in listed.output and "active" in listed.output
    expired = runner.invoke(app, ["alerts", "silence", "expire", silence_id], env=env)
    assert expired.exit_code == 0, expired.output
    assert silence_id not in runner.invoke(app, ["alerts", "silence", "list"], env=env).output
    assert silence_id in runner.invoke(app, ["alerts", "silence", "list", "--all"], env=env).output
    unknown = runner.invoke(app, ["alerts", "silence", "expire", "nope"], env=env)
    assert unknown.exit_code == 1
    everything = runner.invoke(app, ["alerts", "silence", "add", "--comment", "x"], env=env)
    assert everything.exit_code == 2  # refuses to silence every alert


def test_a_resolve_in_the_same_notification_as_its_silenced_firing_is_muted_too() -> None:
    """A fast incident can fire and resolve inside one group wait: the pair must stay silent."""
    now = time.time()
    silence = Silence(matchers=AlertMatcher(key="quiet-*"), starts_at=now - 1, ends_at=now + 60)
    alerts = [
        make_alert("a1", "quiet-1"),
        make_alert("a1", "quiet-1", status="resolved"),
        make_alert("b1", "loud-1"),
    ]
    decision = route(
        alerts, now=now, silences=[silence], firing=[], rules=[], firing_suppressed=set()
    )
    assert [(a.key, a.status) for a in decision.send] == [("loud-1", "firing")]
    assert {(a.key, a.status) for a, _ in decision.suppressed} == {
        ("quiet-1", "firing"),
        ("quiet-1", "resolved"),
    }
