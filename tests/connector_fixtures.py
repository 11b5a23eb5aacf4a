"""Fixtures and helpers for the source-connector tests: a real Mosquitto broker, reading a Kafka
topic back, and copies of real data slices. Imported by the test modules that use them."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from vigil.bench.worker_subprocess import free_port
from vigil.settings import VigilSettings

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real Mosquitto broker on a free port of 127.0.0.1; yields the port."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    home = tmp_path_factory.mktemp("mosquitto")
    port = free_port()
    config = home / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"log_dest file {home / 'mosquitto.log'}\n"
    )
    process = subprocess.Popen(
        [MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Record:
    key: str | None
    value: bytes
    partition: int
    offset: int

    def json(self) -> dict:
        return dict(json.loads(self.value))


async def read_topic(
    settings: VigilSettings, topic: str, expect: int, timeout_s: float = 20.0, settle_s: float = 0.5
) -> list[Record]:
    """Every record of ``topic`` from the start: waits for ``expect`` records, then ``settle_s``
    more so that duplicates (more than expected) would show. Ordered by partition, offset."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Record] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    settle_until: float | None = None
    try:
        while loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=100)
            for messages in batches.values():
                records.extend(
                    Record(m.key.decode() if m.key else None, m.value, m.partition, m.offset)
                    for m in messages
                )
            if len(records) >= expect:
                settle_until = settle_until or loop.time() + settle_s
                if loop.time() >= settle_until:
                    break
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def by_key(records: list[Record]) -> dict[str, list[dict]]:
    """Readings per key, in the order Kafka keeps them (one key = one partition)."""
    grouped: dict[str, list[dict]] = {}
    for record in records:
        grouped.setdefault(record.key or "", []).append(record.json())
    return grouped


def cli_env(settings: VigilSettings) -> dict[str, str]:
    """Variables that point a `vigil` command at this test's topics and Redis namespace."""
    return {
        "VIGIL_APP_ID": settings.app_id,
        "VIGIL_TOPICS__READINGS": settings.topics.readings,
        "VIGIL_TOPICS__DEAD_LETTERS": settings.topics.dead_letters,
    }


def head_of_csv(source: Path, target: Path, rows: int) -> Path:
    """The header and first ``rows`` data lines of a real CSV, copied to ``target``."""
    with source.open() as handle:
        lines = [next(handle) for _ in range(rows + 1)]
    target.write_text("".join(lines))
    return target
