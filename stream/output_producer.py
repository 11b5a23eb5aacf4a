"""The worker's output records go to Kafka as record batches, one per topic-partition.

A batch of events yields hundreds of output records. Sending each through Faust's
``topic.send`` costs a coroutine, a future and a trip through Faust's producer buffer per
record; here a batch's records are partitioned once (the Kafka default partitioner on the key,
exactly where ``topic.send`` would put them), appended to aiokafka record batches and handed
over with one ``send_batch`` per topic-partition. Each record's delivery is the delivery of the
batch it went in.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from vigil.connectors.producer import kafka_client_options
from vigil.settings import VigilSettings
from vigil.stream.batch_handler import OutputRecord

BATCH_BYTES = 512 * 1024  # one produce request per topic-partition per batch, comfortably
PARTITIONS_TTL_S = 60.0  # how long a topic's partition list is trusted


class OutputProducer:
    def __init__(self, settings: VigilSettings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None  # built in start(): it needs the loop
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, tuple[float, list[int]]] = {}
        self._started = asyncio.Event()  # agents may get events before services have started

    async def start(self) -> None:
        settings = self.settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap,
            acks="all",
            linger_ms=0,  # records arrive in batches already
            max_batch_size=BATCH_BYTES,
            max_request_size=max(BATCH_BYTES, 1_048_576),
            client_id=f"{settings.app_id}-outputs",
            **kafka_client_options(settings),
        )
        await self._producer.start()
        self._started.set()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    @property
    def producer(self) -> AIOKafkaProducer:
        assert self._producer is not None, "start() first"
        return self._producer

    async def send(
        self, records: Sequence[OutputRecord], separately: bool = False
    ) -> list[Awaitable[Any]]:
        """One awaitable per record (its batch's delivery); ``separately`` gives each record a
        batch of its own, so a refusal names the one record the broker refused."""
        await self._started.wait()
        by_partition: dict[tuple[str, int], list[int]] = defaultdict(list)
        for index, record in enumerate(records):
            partition = await self._partition_of(record.topic, record.key)
            by_partition[(record.topic, partition)].append(index)
        deliveries: list[Awaitable[Any] | None] = [None] * len(records)
        for (topic, partition), indices in by_partition.items():
            builder = self.producer.create_batch()
            members: list[int] = []
            for index in indices:
                record = records[index]
                full = separately and members
                if (
                    full
                    or builder.append(key=record.key, value=record.value, timestamp=None) is None
                ):
                    await self._send(builder, topic, partition, members, deliveries)
                    builder, members = self.producer.create_batch(), []
                    if not self._append(builder, record):
                        deliveries[index] = _refused(ValueError("record larger than a batch"))
                        continue
                members.append(index)
            await self._send(builder, topic, partition, members, deliveries)
        sent = [d for d in deliveries if d is not None]
        assert len(sent) == len(records), "every record is in a batch"
        return sent

    @staticmethod
    def _append(builder: Any, record: OutputRecord) -> bool:
        return builder.append(key=record.key, value=record.value, timestamp=None) is not None

    async def _send(
        self,
        builder: Any,
        topic: str,
        partition: int,
        members: list[int],
        deliveries: list[Awaitable[Any] | None],
    ) -> None:
        if not members:
            return
        try:
            future = await self.producer.send_batch(builder, topic, partition=partition)
        except Exception as exc:  # refused before it was queued (e.g. the broker is away)
            future = _refused(exc)
        shared = asyncio.ensure_future(future)
        for index in members:
            deliveries[index] = shared

    async def _partition_of(self, topic: str, key: bytes | None) -> int:
        cached = self._partitions.get(topic)
        now = time.monotonic()
        if cached is None or now - cached[0] > PARTITIONS_TTL_S:
            partitions = sorted(await self.producer.partitions_for(topic))
            cached = self._partitions[topic] = (now, partitions)
        partitions = cached[1]
        return int(self._partitioner(key, partitions, partitions))


async def _refused(exc: BaseException) -> Any:
    raise exc
