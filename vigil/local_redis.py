"""A local redis-server (Debian's package) on 127.0.0.1 with AOF persistence.

Started by ``vigil up`` and the tests when ``VIGIL_REDIS_URL`` is not set, on a port of
Vigil's own so it never collides with a system Redis.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import redis

from vigil.local_kafka import LocalServiceError, ProcessFile, stop_process
from vigil.settings import VigilSettings


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


class LocalRedis:
    def __init__(self, settings: VigilSettings) -> None:
        self.settings = settings
        self.home = settings.local.home.resolve() / "redis"
        self.pid_file = ProcessFile(self.home / "redis.pid")
        self.log = self.home / "redis.log"
        self.url = settings.local_redis_url

    def running(self) -> bool:
        return self.pid_file.read() is not None

    def start(self, timeout_s: float = 20.0) -> bool:
        """Start redis-server unless it runs already; True if this call started it."""
        if redis_answers(self.url):
            if self.running():
                return False
            raise LocalServiceError(
                f"something else already answers on {self.url};"
                " stop it or change VIGIL_LOCAL__REDIS_PORT"
            )
        binary = shutil.which("redis-server")
        if binary is None:
            raise LocalServiceError(
                "redis-server is not installed: run deploy/local/bootstrap.sh "
                "(apt-get install redis-server) or set VIGIL_REDIS_URL"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        command = [
            binary, "--bind", "127.0.0.1", "--port", str(self.settings.local.redis_port),
            "--dir", str(self.home), "--appendonly", "yes", "--save", "",
            "--daemonize", "yes", "--pidfile", str(self.pid_file.path), "--logfile", str(self.log),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise LocalServiceError(
                f"redis-server failed to start: {result.stderr or result.stdout}"
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if redis_answers(self.url):
                return True
            time.sleep(0.1)
        raise LocalServiceError(f"redis-server did not answer on {self.url}; see {self.log}")

    def stop(self) -> bool:
        return stop_process(self.pid_file)
