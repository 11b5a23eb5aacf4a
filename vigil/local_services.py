"""Brings the local Kafka and Redis up or down together, honouring configured external ones."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from vigil.local_kafka import LocalKafka, broker_answers
from vigil.local_redis import LocalRedis, redis_answers
from vigil.settings import VigilSettings
from vigil.topics import ensure_topics


@dataclass
class ServiceStatus:
    name: str
    address: str
    managed: bool  # started by Vigil (False = configured, external)
    answering: bool


def up(settings: VigilSettings) -> list[str]:
    """Start what is not configured externally, create topics; return what was started."""
    started = []
    if settings.kafka_bootstrap is None and LocalKafka(settings).start():
        started.append("kafka")
    if settings.redis_url is None and LocalRedis(settings).start():
        started.append("redis")
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
    return [
        ServiceStatus(
            "kafka",
            settings.bootstrap,
            settings.kafka_bootstrap is None,
            asyncio.run(broker_answers(settings.bootstrap)),
        ),
        ServiceStatus(
            "redis", settings.redis, settings.redis_url is None, redis_answers(settings.redis)
        ),
    ]
