"""A worker in its own process, configured through ``VIGIL_*`` variables as in production.

Benchmarks run the real thing — ``vigil worker`` or the bare Faust passthrough — as a child
process, so the figures include Faust, the Kafka client and the model thread exactly as deployed,
and the benchmark's own producer and reader never share an event loop with the worker.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from vigil.settings import VigilSettings

VIGIL_WORKER = ("-m", "vigil.cli", "worker", "--loglevel", "warning")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_env(settings: VigilSettings, web_port: int) -> dict[str, str]:
    """The variables that make a child process load exactly ``settings``."""
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
            "VIGIL_DEVICE": settings.device,
            "VIGIL_TORCH_THREADS": str(settings.torch_threads),
            "VIGIL_WEB_PORT": str(web_port),
            "VIGIL_WEBHOOKS": json.dumps([w.model_dump(mode="json") for w in settings.webhooks]),
            "VIGIL_ALERTING": settings.alerting.model_dump_json(),
        }
    )
    if settings.webhook_signing_key is not None:
        env["VIGIL_WEBHOOK_SIGNING_KEY"] = settings.webhook_signing_key.get_secret_value()
    return env


class WorkerSubprocess:
    """Start, probe and stop one worker process; its output goes to a log file."""

    def __init__(
        self, settings: VigilSettings, log_path: Path, args: tuple[str, ...] = VIGIL_WORKER
    ) -> None:
        self.settings = settings
        self.args = args
        self.web_port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> WorkerSubprocess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, *self.args],
                env=worker_env(self.settings, self.web_port),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def check_alive(self) -> None:
        """Raise with the log's tail if the process has exited."""
        if self.process is None:
            raise RuntimeError("worker not started")
        if self.process.poll() is not None:
            raise RuntimeError(
                f"worker exited with {self.process.returncode}; log {self.log_path}:\n"
                + self.log_tail()
            )

    def wait_ready(self, path: str = "/ready", timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready after {timeout_s}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final commit (crash tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def stop(self) -> None:
        """SIGTERM (clean hand-over), SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""
