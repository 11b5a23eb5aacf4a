"""What operators see: no secret in any output, and one clear line (no traceback) when Kafka or
Redis cannot be reached. The commands run as real processes, as an operator runs them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from vigil import local_services
from vigil.local_kafka import LocalServiceError
from vigil.settings import ConfigError, VigilSettings, load_settings

REDIS_PASSWORD = "canary-redis-7f3a91"
SASL_PASSWORD = "canary-sasl-91bc04"
SIGNING_KEY = "canary-signing-5d2e77"
HOOK_PATH = "canary-hookpath-0a1b22"
HOOK_TOKEN = "canary-hooktoken-c4d533"
HOOK_PASSWORD = "canary-hookpw-e6f844"
CANARIES = [REDIS_PASSWORD, SASL_PASSWORD, SIGNING_KEY, HOOK_PATH, HOOK_TOKEN, HOOK_PASSWORD]


WAIT = {"up": [], "status": [], "worker": ["--wait-s", "1"]}  # the worker waits 60 s by default


def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def vigil(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the `vigil` command with only the given VIGIL_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    return subprocess.run(
        [sys.executable, "-m", "vigil.cli", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def secret_env(kafka: str, redis_port: int) -> dict[str, str]:
    """A secret planted in every setting that can hold one."""
    webhooks = [
        {"url": f"https://hooks.example.com/services/{HOOK_PATH}?token={HOOK_TOKEN}"},
        {"url": f"http://alerts:{HOOK_PASSWORD}@receiver.example:8080/"},
    ]
    return {
        "VIGIL_KAFKA_BOOTSTRAP": kafka,
        "VIGIL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "VIGIL_KAFKA_SASL_MECHANISM": "PLAIN",
        "VIGIL_KAFKA_SASL_USERNAME": "vigil",
        "VIGIL_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
        "VIGIL_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/0",
        "VIGIL_WEBHOOKS": json.dumps(webhooks),
        "VIGIL_WEBHOOK_SIGNING_KEY": SIGNING_KEY,
    }


def leaked(text: str) -> list[str]:
    return [canary for canary in CANARIES if canary in text]


def only_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    return lines[0]


def test_vigil_settings_masks_every_secret(tmp_path: Path) -> None:
    env = secret_env(f"127.0.0.1:{closed_port()}", closed_port())
    result = vigil(["settings"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not leaked(result.stdout + result.stderr)
    shown = json.loads(result.stdout)
    # masked, not dropped: what is not secret stays readable
    assert shown["redis_url"] == f"redis://:***@{env['VIGIL_REDIS_URL'].split('@')[1]}"
    assert [w["url"] for w in shown["webhooks"]] == [
        "https://hooks.example.com/***",
        "http://receiver.example:8080",
    ]
    assert shown["kafka_sasl_username"] == "vigil"
    assert shown["kafka_sasl_password"] == shown["webhook_signing_key"] == "**********"


def test_unreachable_kafka_is_one_line_naming_it_for_up_status_and_worker(tmp_path: Path) -> None:
    kafka = f"127.0.0.1:{closed_port()}"
    env = secret_env(kafka, closed_port())
    for command in ("up", "status", "worker"):
        result = vigil([command, *WAIT[command]], env, tmp_path)
        assert result.returncode != 0, command
        assert "Traceback" not in result.stdout + result.stderr, command
        assert not leaked(result.stdout + result.stderr), command
        line = only_line(result.stderr)
        assert f"Kafka does not answer at {kafka}" in line, (command, line)
        assert "VIGIL_KAFKA_BOOTSTRAP" in line
        if command == "status":  # and its table: both DOWN, the Redis password masked
            assert "redis  redis://:***@127.0.0.1:" in result.stdout
            assert result.stdout.count("DOWN") == 2


@pytest.mark.services
def test_unreachable_redis_is_one_line_naming_it_for_up_status_and_worker(
    services: VigilSettings, tmp_path: Path
) -> None:
    redis_port = closed_port()
    env = {
        "VIGIL_KAFKA_BOOTSTRAP": services.bootstrap,
        "VIGIL_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/0",
        "VIGIL_WEBHOOK_SIGNING_KEY": SIGNING_KEY,
    }
    for command in ("up", "status", "worker"):
        result = vigil([command, *WAIT[command]], env, tmp_path)
        assert result.returncode != 0, command
        assert "Traceback" not in result.stdout + result.stderr, command
        assert not leaked(result.stdout + result.stderr), command
        line = only_line(result.stderr)
        assert f"Redis does not answer at redis://:***@127.0.0.1:{redis_port}/0" in line, line
    assert f"kafka  {services.bootstrap}" in vigil(["status"], env, tmp_path).stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VIGIL_REDIS_URL", f"http://:{REDIS_PASSWORD}@redis:6379/0"),
        ("VIGIL_REDIS_URL", f"rediss//user:{REDIS_PASSWORD}@redis:6379/0"),
        ("VIGIL_KAFKA_BOOTSTRAP", f"vigil:{SASL_PASSWORD}@broker"),
        ("VIGIL_KAFKA_BOOTSTRAP", f"broker:9092,vigil:{SASL_PASSWORD}@other"),
        ("VIGIL_WEBHOOKS", json.dumps([{"url": f"ftp://u:{HOOK_PASSWORD}@h/{HOOK_PATH}"}])),
        ("VIGIL_WEBHOOKS", json.dumps([f"https://hooks.example.com/{HOOK_PATH}?t={HOOK_TOKEN}"])),
        ("VIGIL_WEBHOOKS", json.dumps({"url": f"https://hooks.example.com/{HOOK_PATH}"})),
        ("VIGIL_WEBHOOKS", f'[{{"url": "https://hooks.example.com/{HOOK_PATH}"'),  # broken JSON
        (
            "VIGIL_WEBHOOKS",
            json.dumps([{"url": f"https://hooks.example.com/{HOOK_PATH}", "min_severity": "x"}]),
        ),
    ],
)
def test_a_bad_secret_bearing_value_is_named_without_its_secret(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("VIGIL_KAFKA_SASL_PASSWORD", SASL_PASSWORD)
    monkeypatch.setenv("VIGIL_WEBHOOK_SIGNING_KEY", SIGNING_KEY)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert variable in str(error.value)
    assert not leaked(str(error.value)), str(error.value)


@pytest.mark.services
def test_a_worker_started_during_a_redis_outage_waits_it_out(
    services: VigilSettings, tmp_path: Path
) -> None:
    """A worker restarted while Redis is away (a crash mid-outage, a rollout) must not give up
    at once: it waits up to --wait-s for Redis to come back."""
    port = closed_port()
    settings = services.model_copy(
        update={"kafka_bootstrap": services.bootstrap, "redis_url": f"redis://127.0.0.1:{port}/0"}
    )
    with pytest.raises(LocalServiceError, match=f"Redis does not answer at .*:{port}"):
        local_services.require_answering(settings)
    command = [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
               "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]  # fmt: skip
    started: list[subprocess.Popen[bytes]] = []
    late = threading.Timer(1.0, lambda: started.append(subprocess.Popen(command)))
    late.start()
    try:
        local_services.require_answering(settings, wait_s=60, poll_s=0.2)  # returns once it answers
        assert started, "returned before Redis was there"
    finally:
        late.join()
        for process in started:
            process.terminate()
            process.wait(timeout=10)
