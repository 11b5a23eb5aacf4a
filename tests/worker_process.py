"""A real `vigil worker` in a subprocess, configured through VIGIL_* variables like production."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from vigil.settings import VigilSettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_env(settings: VigilSettings, web_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "VIGIL_APP_ID": settings.app_id,
            "VIGIL_TOPICS": settings.topics.model_dump_json(),
            "VIGIL_GROUPS": json.dumps([g.model_dump(mode="json") for g in settings.groups]),
            "VIGIL_BATCH": settings.batch.model_dump_json(),
            "VIGIL_STREAM": settings.stream.model_dump_json(),
            "VIGIL_KAFKA_BOOTSTRAP": settings.bootstrap,
            "VIGIL_REDIS_URL": settings.redis,
            "VIGIL_WEB_PORT": str(web_port),
            "VIGIL_WEBHOOKS": json.dumps([w.model_dump(mode="json") for w in settings.webhooks]),
            "VIGIL_ALERTING": settings.alerting.model_dump_json(),
        }
    )
    if settings.webhook_signing_key is not None:
        env["VIGIL_WEBHOOK_SIGNING_KEY"] = settings.webhook_signing_key.get_secret_value()
    return env


class WorkerProcess:
    def __init__(self, settings: VigilSettings, log_dir: Path, name: str = "worker") -> None:
        self.settings = settings
        self.web_port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> WorkerProcess:
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vigil.cli", "worker", "--loglevel", "info"],
                env=worker_env(self.settings, self.web_port),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready after {timeout_s}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final commit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=5).text

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""
