"""Brings the local Kafka and Redis up or down together, honouring configured external ones."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from vigil.connectors.producer import kafka_client_options
from vigil.local_kafka import LocalKafka, LocalServiceError, broker_answers
from vigil.local_redis import LocalRedis, redis_answers
from vigil.redaction import mask_credentials
from vigil.settings import VigilSettings
from vigil.topics import ensure_topics


@dataclass
class ServiceStatus:
    name: str
    address: str
    managed: bool  # started by Vigil (False = configured, external)
    answering: bool

    @property
    def problem(self) -> str:
        """One line for an operator: what did not answer, where, and which knob points there."""
        what = {"kafka": "Kafka", "redis": "Redis"}[self.name]
        where = {"kafka": "VIGIL_KAFKA_BOOTSTRAP", "redis": "VIGIL_REDIS_URL"}[self.name]
        hint = f"check {where}" if not self.managed else f"run `vigil up` or set {where}"
        return f"{what} does not answer at {self.address} ({hint})"


def require_answering(settings: VigilSettings, wait_s: float = 0.0, poll_s: float = 0.5) -> None:
    """Raise :class:`LocalServiceError` naming the first service that does not answer, after
    waiting up to ``wait_s`` for both (a worker restarted during an outage waits it out)."""
    deadline = time.monotonic() + wait_s
    while True:
        down = [item for item in status(settings) if not item.answering]
        if not down:
            return
        if time.monotonic() >= deadline:
            raise LocalServiceError(down[0].problem)
        time.sleep(poll_s)


def up(settings: VigilSettings) -> list[str]:
    """Start what is not configured externally, create topics; return what was started."""
    started = []
    if settings.kafka_bootstrap is None and LocalKafka(settings).start():
        started.append("kafka")
    if settings.redis_url is None and LocalRedis(settings).start():
        started.append("redis")
    require_answering(settings)  # external ones: one clear line, not a client's traceback
    asyncio.run(ensure_topics(settings))
    return started


def down(settings: VigilSettings) -> list[str]:
    stopped = []
    if settings.kafka_bootstrap is None and LocalKafka(settings).stop():
        stopped.append("kafka")
    if settings.redis_url is None and LocalRedis(settings).stop():
        stopped.append("redis")
    return stopped


def status(settings: VigilSettings) -> list[ServiceStatus]:
    """Whether Kafka and Redis answer; addresses are shown with their passwords masked."""
    return [
        ServiceStatus(
            "kafka",
            mask_credentials(settings.bootstrap),
            settings.kafka_bootstrap is None,
            asyncio.run(broker_answers(settings.bootstrap, options=kafka_options(settings))),
        ),
        ServiceStatus(
            "redis",
            mask_credentials(settings.redis),
            settings.redis_url is None,
            redis_answers(settings.redis),
        ),
    ]


def kafka_options(settings: VigilSettings) -> dict[str, object]:
    """The security options every Kafka client of Vigil's needs (SASL, TLS); empty locally."""
    return kafka_client_options(settings)
