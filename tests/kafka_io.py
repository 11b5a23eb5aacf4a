"""Small real-Kafka helpers for integration tests: produce raw records, read a topic back."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, RecordMetadata

from vigil.records import DeadLetter
from vigil.settings import VigilSettings


async def produce(
    settings: VigilSettings, topic: str, records: list[tuple[bytes | None, bytes]]
) -> list[RecordMetadata]:
    """Send (key, value) pairs in order; return each one's partition and offset."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        return [await f for f in futures]
    finally:
        await producer.stop()


def reading(ts: float, value: float | None) -> bytes:
    return json.dumps({"timestamp": ts, "value": value}).encode()


async def read_topic(
    settings: VigilSettings, topic: str, *, count: int, timeout_s: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read from the beginning until `count` records arrived or the time is up."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(found) < count:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            batch = await consumer.getmany(timeout_ms=int(min(left, 1.0) * 1000))
            for records in batch.values():
                found.extend(records)
    finally:
        await consumer.stop()
    return found


def values(records: list[ConsumerRecord[bytes, bytes]]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


async def read_dead_letters(
    settings: VigilSettings, count: int, *, timeout_s: float = 15.0
) -> list[DeadLetter]:
    """The dead-letter topic from the beginning, until ``count`` letters or the time is up."""
    records = await read_topic(settings, settings.topics.dead_letters, count=count,
                               timeout_s=timeout_s)  # fmt: skip
    return [DeadLetter.model_validate_json(r.value) for r in records]
