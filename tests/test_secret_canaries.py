"""Secrets never reach output or logs: canaries in every secret-bearing setting, a real worker
delivering a webhook through a Redis that requires its password, and the operator commands.

The canaries: the Redis password (a redis-server of the test's own with ``requirepass``), the
SASL password, the webhook signing key, the web token and a token in the webhook URL's path (as
Slack's URLs carry one). Everything the worker logged at ``info`` and every command printed is
searched for each of them.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.alerting_worker import alerting_worker_settings
from tests.kafka_io import produce, reading
from tests.webhook_receiver import WebhookReceiver, wait_until
from tests.worker_process import WorkerProcess
from vigil.bench.drills import DrillRedis
from vigil.bench.worker_subprocess import worker_env
from vigil.settings import (
    VigilSettings,
)
from vigil.topics import ensure_topics

pytestmark = pytest.mark.services

CANARIES = {
    "redis password": "canaryRedisPw7",
    "sasl password": "canarySaslPw7",
    "signing key": "canarySigningKey7",
    "web token": "canaryWebToken7",
    "webhook url token": "canaryHookToken7",
}


async def test_no_secret_reaches_a_log_or_an_output(
    settings: VigilSettings, tmp_path: Path
) -> None:
    redis_server = DrillRedis(tmp_path / "redis", password=CANARIES["redis password"]).start()
    path = f"/services/T0/{CANARIES['webhook url token']}"
    try:
        async with WebhookReceiver(signing_key=CANARIES["signing key"], path=path) as receiver:
            configured = alerting_worker_settings(
                settings,
                receiver.url,
                CANARIES["signing key"],
                redis_url=redis_server.url,
                kafka_sasl_password=SecretStr(CANARIES["sasl password"]),
                web_token=SecretStr(CANARIES["web token"]),
            )
            await ensure_topics(configured)
            worker = WorkerProcess(configured, tmp_path).start()
            try:
                await asyncio.to_thread(worker.wait_ready)
                n = 60
                values = [10 + math.sin(i / 3) + 0.05 * ((i * 7919) % 13) for i in range(n)]
                values[45] += 60.0
                await produce(
                    configured,
                    configured.topics.readings,
                    [
                        (b"canary-1", reading(1_700_000_000 + 60 * i, v))
                        for i, v in enumerate(values)
                    ],
                )
                await wait_until(lambda: bool(receiver.accepted), timeout_s=60)
            finally:
                await asyncio.to_thread(worker.stop)
            assert all(r.signature_problem is None for r in receiver.requests)
            env = worker_env(configured, 6066) | {"VIGIL_WEB_TOKEN": CANARIES["web token"]}
            env["VIGIL_KAFKA_SASL_PASSWORD"] = CANARIES["sasl password"]
            printed = [
                subprocess.run(
                    [sys.executable, "-m", "vigil.cli", *command],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                for command in (["settings"], ["status"], ["alerting", "status"])
            ]
    finally:
        redis_server.stop()
    texts = {"worker log": worker.log_path.read_text(errors="replace")}
    for result, name in zip(printed, ("settings", "status", "alerting status"), strict=True):
        texts[f"vigil {name}"] = result.stdout + result.stderr
    assert "HTTP Request" not in texts["worker log"]  # httpx's own URL logging is off
    leaks = [
        f"{secret} in {where}"
        for secret, canary in CANARIES.items()
        for where, text in texts.items()
        if canary in text
    ]
    assert not leaks, leaks
    assert len(texts["vigil settings"]) > 200  # the commands really printed their tables
