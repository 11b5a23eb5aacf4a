"""The one Kafka producer every source and sink shares: readings in, dead letters out.

Sends are acknowledged by the broker (acks=all, idempotent), so a connector that checkpoints
after :meth:`RecordProducer.flush` never loses a record it has reported as sent.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors

from vigil.records import DeadLetter, Reading
from vigil.settings import VigilSettings


def kafka_client_options(settings: VigilSettings) -> dict[str, object]:
    """Security options for aiokafka clients, from the settings (empty for PLAINTEXT)."""
    protocol = getattr(settings, "kafka_security_protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, object] = {"security_protocol": protocol}
    mechanism = getattr(settings, "kafka_sasl_mechanism", None)
    if mechanism:
        password = getattr(settings, "kafka_sasl_password", None)
        options |= {
            "sasl_mechanism": mechanism,
            "sasl_plain_username": getattr(settings, "kafka_sasl_username", None),
            "sasl_plain_password": password.get_secret_value() if password else None,
        }
    if "SSL" in protocol:
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context(
            cafile=getattr(settings, "kafka_ssl_cafile", None)
        )
    return options


RETRIABLE = (kafka_errors.KafkaConnectionError, kafka_errors.KafkaTimeoutError)


class DeliveryError(RuntimeError):
    """Kafka did not acknowledge some records; the caller must not checkpoint past them."""


class RecordProducer:
    """Async producer of Vigil's wire records: ``async with RecordProducer(settings) as p``."""

    def __init__(self, settings: VigilSettings, *, linger_ms: int = 5) -> None:
        self.settings = settings
        self.linger_ms = linger_ms
        self._producer = self._new_producer()
        self._pending: list[asyncio.Future[Any]] = []
        self.restarts = 0

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=self.linger_ms,
            **kafka_client_options(self.settings),
        )

    async def __aenter__(self) -> Self:
        await self._producer.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._producer.stop()

    async def send_reading(self, key: str, reading: Reading, topic: str | None = None) -> None:
        """Queue one reading (returns once buffered; call flush() before checkpointing)."""
        await self.send_raw(topic or self.settings.topics.readings, reading.to_json(), key.encode())

    async def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self._pending.append(await self._producer.send(topic, value, key=key))
        if len(self._pending) >= 4096:  # long-lived senders: forget what was delivered fine
            self._pending = [
                f for f in self._pending if not f.done() or f.cancelled() or f.exception()
            ]

    async def send_dead_letter(
        self, reason: str, value: bytes, *, topic: str, source: str, key: str | None = None,
        partition: int | None = None, offset: int | None = None,
    ) -> None:  # fmt: skip
        letter = DeadLetter.of(
            reason, value, topic=topic, partition=partition, offset=offset, key=key, source=source,
            at=time.time(),
        )  # fmt: skip
        await self.send_raw(
            self.settings.topics.dead_letters,
            letter.model_dump_json().encode(),
            key.encode() if key else None,
        )

    async def flush(self) -> None:
        """Wait until every record sent so far is acknowledged; raise if any delivery failed.

        aiokafka's own flush() does not raise for a failed batch, so the delivery futures are
        kept and checked here: a checkpoint taken after flush() never skips a lost record.
        """
        pending, self._pending = self._pending, []
        await self._producer.flush()
        results = await asyncio.gather(*pending, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures and not all(isinstance(f, RETRIABLE) for f in failures):
            # A record the broker refused for good leaves an idempotent producer's sequence
            # numbers with a gap, and every later send fails (OutOfOrderSequenceNumber): start
            # over with a fresh producer id, so one refused record costs only itself.
            await self._producer.stop()
            self._producer = self._new_producer()
            await self._producer.start()
            self.restarts += 1
        if failures:
            raise DeliveryError(
                f"{len(failures)} of {len(pending)} records were not delivered"
            ) from failures[0]
