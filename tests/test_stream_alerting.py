"""Alerts from the real stream reach a real webhook receiver through the alerts topic and the
worker's in-process alerting service: signed, deduplicated, silenced, logged once."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.alerting_worker import alerting_worker_settings
from tests.kafka_io import produce, reading
from tests.webhook_receiver import WebhookReceiver, wait_until
from tests.worker_process import WorkerProcess
from vigil.settings import (
    VigilSettings,
)
from vigil.topics import ensure_topics

pytestmark = pytest.mark.services


def spiky(n: int, spike_at: int, base: float) -> list[float]:
    out = [base + math.sin(i / 3.0) + 0.05 * ((i * 7919) % 13) for i in range(n)]
    out[spike_at] += 60.0
    return out


async def test_stream_alerts_reach_the_webhook_and_silences_hold_them(
    settings: VigilSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_WEB_TOKEN", "t0ken")  # the worker's writes need it (vigil.ui)
    async with WebhookReceiver(signing_key="s3cret") as receiver:
        configured = alerting_worker_settings(settings, receiver.url, "s3cret")
        await ensure_topics(configured)
        worker = WorkerProcess(configured, tmp_path).start()
        try:
            await asyncio.to_thread(worker.wait_ready)
            async with httpx.AsyncClient(headers={"Authorization": "Bearer t0ken"}) as client:
                response = await client.post(
                    f"{worker.url}/silences",
                    json={
                        "matchers": {"key": "quiet-*"},
                        "duration": "1h",
                        "comment": "maintenance",
                    },
                )
                assert response.status_code == 201, response.text
                listed = (await client.get(f"{worker.url}/silences")).json()
                assert len(listed["silences"]) == 1
            n = 60
            records = []
            for i in range(n):
                for key, base in (("loud-1", 10.0), ("quiet-1", 20.0)):
                    records.append(
                        (key.encode(), reading(1_700_000_000 + 60 * i, spiky(n, 45, base)[i]))
                    )
            await produce(configured, configured.topics.readings, records)

            await wait_until(lambda: "loud-1" in str(receiver.accepted_bodies()), timeout_s=60)
            await asyncio.sleep(2.0)  # room for a (wrong) delivery of the silenced key
            async with httpx.AsyncClient() as client:
                logged = (await client.get(f"{worker.url}/alerts", params={"since": 0})).json()
                bad = await client.get(f"{worker.url}/alerts", params={"limit": "abc"})
        finally:
            await asyncio.to_thread(worker.stop)
        # the alert log has every alert once, the silenced ones too; bad queries answer 400
        entries = Counter((a["alert_id"], a["status"]) for a in logged["alerts"])
        assert {a["key"] for a in logged["alerts"]} == {"loud-1", "quiet-1"}
        assert set(entries.values()) == {1}
        assert bad.status_code == 400 and "error" in bad.json()
        bodies = receiver.accepted_bodies()
        keys = {alert["key"] for body in bodies for alert in body["alerts"]}
        assert keys == {"loud-1"}  # quiet-1 fired too, but is silenced
        assert all(r.signature_problem is None for r in receiver.requests)
        assert max(receiver.accepted.values()) == 1  # each idempotency key accepted once
