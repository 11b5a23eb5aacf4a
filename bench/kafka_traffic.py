"""Benchmark traffic on the real broker: readings in (as a backlog or at a paced rate), records
read back by offset range, end offsets and consumer-group lag, topics deleted afterwards.

Readings are built into record batches per partition (``create_batch``/``send_batch``) rather
than sent one by one: the producer shares a 2-core machine with the worker it measures, and a
batch costs a fraction of the CPU per record. Key ``k`` always goes to partition
``k % partitions``, so each key's readings stay in order; each reading's timestamp (in the JSON
and as the Kafka timestamp) is the wall-clock time it was built, so end-to-end latency is the
output record's CreateTime minus that timestamp.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

Offsets = dict[int, int]  # partition -> offset


class ReadingSeries:
    """Numeric series with noise, one per key: a level per key, a slow sine, Gaussian noise."""

    def __init__(self, keys: int, partitions: int, seed: int = 0) -> None:
        self.keys = [f"bench-{k:03d}".encode() for k in range(keys)]
        self.partitions = partitions
        self.steps = [0] * keys
        self.last_ts = [0.0] * keys
        self.random = random.Random(seed)

    def partition_of(self, key_index: int) -> int:
        return key_index % self.partitions

    def next_value(self, key_index: int, ts: float) -> bytes:
        """The key's next reading at ``ts`` (moved just past the key's last one if needed)."""
        ts = max(ts, self.last_ts[key_index] + 1e-6)
        self.last_ts[key_index] = ts
        step = self.steps[key_index]
        self.steps[key_index] = step + 1
        value = (
            10.0 * (key_index + 1)
            + 3.0 * math.sin(2 * math.pi * step / 50.0)
            + self.random.gauss(0.0, 0.2)
        )
        return json.dumps({"timestamp": ts, "value": round(value, 5)}).encode()


@dataclass(frozen=True)
class PacedRun:
    """What a paced producer actually did."""

    sent: int
    seconds: float
    target_per_s: float

    @property
    def achieved_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


class ReadingProducer:
    """Builds and sends batches of readings; every batch is awaited before :meth:`flush` ends."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        series: ReadingSeries,
        options: dict[str, object] | None = None,
    ) -> None:
        # options: kafka_client_options(settings), the SASL/TLS settings of a secured cluster
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **(options or {}))
        self.topic = topic
        self.series = series
        self.pending: list[asyncio.Future[object]] = []

    async def __aenter__(self) -> ReadingProducer:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.flush()
        finally:
            await self.producer.stop()

    async def send(self, records: list[tuple[int, float]]) -> None:
        """Send (key index, timestamp) readings, one batch per partition (more if one is full)."""
        by_partition: dict[int, list[tuple[int, float]]] = {}
        for key_index, ts in records:
            by_partition.setdefault(self.series.partition_of(key_index), []).append((key_index, ts))
        for partition, items in by_partition.items():
            batch = self.producer.create_batch()
            for key_index, ts in items:
                value = self.series.next_value(key_index, ts)
                key = self.series.keys[key_index]
                stamp = int(self.series.last_ts[key_index] * 1000)
                if batch.append(key=key, value=value, timestamp=stamp) is None:
                    await self._submit(batch, partition)
                    batch = self.producer.create_batch()
                    batch.append(key=key, value=value, timestamp=stamp)
            await self._submit(batch, partition)

    async def _submit(self, batch: object, partition: int) -> None:
        future = await self.producer.send_batch(batch, self.topic, partition=partition)
        self.pending.append(future)
        if len(self.pending) > 256:
            for done in [f for f in self.pending if f.done()]:
                done.result()  # a failed delivery stops the benchmark here
            self.pending = [f for f in self.pending if not f.done()]

    async def flush(self) -> None:
        if self.pending:
            await asyncio.gather(*self.pending)
            self.pending = []

    async def backlog(self, per_key: int, *, interval_s: float, end_ts: float) -> int:
        """``per_key`` readings for every key, ``interval_s`` apart, the newest at ``end_ts``."""
        keys = len(self.series.keys)
        for step in range(per_key):
            ts = end_ts - (per_key - 1 - step) * interval_s
            await self.send([(k, ts) for k in range(keys)])
        await self.flush()
        return per_key * keys

    async def paced(self, rate: float, seconds: float, tick_s: float = 0.005) -> PacedRun:
        """Offer ``rate`` readings/s (keys round-robin) for ``seconds``, timestamped when built.

        Every tick sends what is due since the start, so a late tick catches up rather than
        lowering the offered rate; one tick never sends more than 0.1 s worth (no burst storm
        after a stall of this process).
        """
        keys = len(self.series.keys)
        start = time.monotonic()
        sent = 0
        next_key = 0
        while (elapsed := time.monotonic() - start) < seconds:
            due = min(int(rate * elapsed) - sent, max(1, int(rate * 0.1)))
            if due > 0:
                now = time.time()
                records = [((next_key + i) % keys, now) for i in range(due)]
                next_key = (next_key + due) % keys
                await self.send(records)
                sent += due
            await asyncio.sleep(tick_s)
        elapsed = time.monotonic() - start
        await self.flush()
        return PacedRun(sent, elapsed, rate)


class TopicReader:
    """Reads the broker's view: end offsets, and records in exact offset ranges."""

    def __init__(
        self, bootstrap: str, partitions: int, options: dict[str, object] | None = None
    ) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 << 20,
            **(options or {}),
        )

    async def __aenter__(self) -> TopicReader:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    def _tps(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for p in range(self.partitions)]

    async def end_offsets(self, topic: str) -> Offsets:
        ends = await self.consumer.end_offsets(self._tps(topic))
        return {tp.partition: int(offset) for tp, offset in ends.items()}

    async def count(self, topic: str) -> int:
        return sum((await self.end_offsets(topic)).values())

    async def wait_for_count(
        self,
        topic: str,
        wanted: int,
        timeout_s: float,
        check: Callable[[], None] = lambda: None,
        poll_s: float = 0.25,
    ) -> float | None:
        """Seconds until ``topic`` holds ``wanted`` records (None on timeout); ``check`` may
        raise (e.g. the worker died)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if await self.count(topic) >= wanted:
                return time.monotonic() - start
            check()
            await asyncio.sleep(poll_s)
        return None

    async def read(
        self, topic: str, start: Offsets | None = None, end: Offsets | None = None
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Every record with start <= offset < end per partition (default: all so far)."""
        end = end if end is not None else await self.end_offsets(topic)
        start = start or {}
        wanted = [
            tp for tp in self._tps(topic) if end.get(tp.partition, 0) > start.get(tp.partition, 0)
        ]
        if not wanted:
            return []
        self.consumer.assign(wanted)
        for tp in wanted:
            self.consumer.seek(tp, start.get(tp.partition, 0))
        found: list[ConsumerRecord[bytes, bytes]] = []
        open_tps = set(wanted)
        deadline = time.monotonic() + 120
        while open_tps and time.monotonic() < deadline:
            batches = await self.consumer.getmany(*open_tps, timeout_ms=500, max_records=20_000)
            for tp, records in batches.items():
                stop = end[tp.partition]
                found.extend(r for r in records if r.offset < stop)
                if records and records[-1].offset >= stop - 1:
                    open_tps.discard(tp)
        if open_tps:
            raise TimeoutError(f"could not read {topic} up to {end}: stuck at {open_tps}")
        return found


async def committed_lag(
    bootstrap: str,
    group_id: str,
    topic: str,
    end: Offsets,
    options: dict[str, object] | None = None,
) -> int | None:
    """High-water mark minus the group's committed offset, summed over partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(options or {}))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group_id)
    except Exception:
        return None
    finally:
        await admin.close()
    lag = 0
    for partition, high in end.items():
        meta = committed.get(TopicPartition(topic, partition))
        done = meta.offset if meta is not None and meta.offset >= 0 else 0
        lag += max(0, high - done)
    return lag


async def delete_topics(
    bootstrap: str, names: list[str], options: dict[str, object] | None = None
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(options or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()
