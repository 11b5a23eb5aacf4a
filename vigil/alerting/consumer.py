"""The one way alerts enter alerting: the :class:`AlertsConsumer` reads the alerts topic.

For each record it calls :meth:`AlertDispatcher.submit`, one Redis script that dedupes on (alert
id, status), appends the alert to the alert log and queues it in its group, all or nothing.
Offsets are committed only after every record of a batch went through it (and every record that
is not an alert is acknowledged on the dead-letter topic). So:

* a crash before the script ran: the record is redelivered and accepted then (nothing lost);
* a crash after it, before the commit: the record is redelivered, the script finds it seen and
  changes nothing (nothing doubled, in the log or in the deliveries);
* a batch that fails half-way (Redis down) is read again from its first record, never skipped.

The consumer group is ``{app_id}-alerting``; several consumers (workers, ``vigil alerting run``
replicas) share the topic's partitions, and Redis makes their grouping and delivery safe to run
side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError
from redis.asyncio import Redis

from vigil.alerting.dispatcher import AlertDispatcher
from vigil.connectors.producer import RecordProducer, kafka_client_options
from vigil.outage import QuietFailures
from vigil.records import Alert
from vigil.settings import VigilSettings

log = logging.getLogger(__name__)

DEAD_LETTER_SOURCE = "alerting"
RETRY_PAUSE_S = 1.0


def consumer_group(settings: VigilSettings) -> str:
    return f"{settings.app_id}-alerting"


class AlertsConsumer:
    """Alerts topic → alert log + dispatcher. ``start``, then ``run(stop)`` until ``stop`` is
    set, then ``close``; or ``async with`` around ``run``."""

    def __init__(self, settings: VigilSettings) -> None:
        self.settings = settings
        self.redis = Redis.from_url(settings.redis)
        self.producer = RecordProducer(settings)
        self.dispatcher = AlertDispatcher(settings, self.redis, producer=self.producer)
        self._consumer = AIOKafkaConsumer(
            settings.topics.alerts,
            bootstrap_servers=settings.bootstrap,
            group_id=consumer_group(settings),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **kafka_client_options(settings),
        )
        self._started: list[str] = []

    async def start(self) -> None:
        await self.producer.__aenter__()
        self._started.append("producer")
        await self.dispatcher.start()
        self._started.append("dispatcher")
        await self._consumer.start()
        self._started.append("consumer")

    async def close(self) -> None:
        """Stop reading, let deliveries in flight finish, close the clients (whatever started)."""
        if "consumer" in self._started:
            await self._consumer.stop()
        if "dispatcher" in self._started:
            await self.dispatcher.stop()
        if "producer" in self._started:
            await self.producer.__aexit__(None, None, None)
        self._started.clear()
        await self.redis.aclose()

    async def __aenter__(self) -> AlertsConsumer:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; a failing batch is retried from its first record."""
        fetching = QuietFailures(log, "alerts consumer: fetch")
        accepting = QuietFailures(log, "alerts consumer: batch")
        while not stop.is_set():
            try:
                batches = await self._consumer.getmany(timeout_ms=200, max_records=500)
            except KafkaError as exc:  # the client reconnects by itself; keep asking
                fetching.failed(exc)
                await _sleep_unless(stop, RETRY_PAUSE_S)
                continue
            fetching.succeeded()
            if not batches:
                continue
            try:
                await self.accept_batch(list(batches.values()))
            except Exception as exc:
                accepting.failed(exc)  # read it again: accepting is idempotent
                for tp, messages in batches.items():
                    self._consumer.seek(tp, messages[0].offset)
                await _sleep_unless(stop, RETRY_PAUSE_S)
                continue
            accepting.succeeded()
            try:
                await self._consumer.commit()
            except CommitFailedError as exc:  # rebalanced: the replay is deduplicated
                log.warning("alerts consumer: commit failed (%s); batch will replay", exc)

    async def accept_batch(self, batches: list[list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Every record accepted (or dead-lettered and acknowledged): safe to commit after."""
        for messages in batches:
            for message in messages:
                await self._accept(message)
        await self.producer.flush()

    async def _accept(self, message: ConsumerRecord[bytes, bytes]) -> None:
        value = message.value or b""
        try:
            alert = Alert.model_validate_json(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "record"
            await self.producer.send_dead_letter(
                f"not an alert: {where}: {first['msg']}", value,
                topic=message.topic, source=DEAD_LETTER_SOURCE, partition=message.partition,
                offset=message.offset,
                key=message.key.decode("utf-8", "replace") if message.key else None,
            )  # fmt: skip
            return
        await self.dispatcher.submit(alert)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def consume_alerts(
    settings: VigilSettings, stop: asyncio.Event, *, ready: asyncio.Event | None = None
) -> None:
    """Run an :class:`AlertsConsumer` until ``stop`` is set (``ready`` once it has started)."""
    async with AlertsConsumer(settings) as consumer:
        if ready is not None:
            ready.set()
        await consumer.run(stop)
