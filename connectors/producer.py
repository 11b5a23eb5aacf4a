"""The one Kafka producer every source and sink shares: readings in, dead letters out.

Sends are acknowledged by the broker (acks=all, idempotent), so a connector that checkpoints
after :meth:`RecordProducer.flush` never loses a record it has reported as sent.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Self

from aiokafka import AIOKafkaProducer

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


class RecordProducer:
    """Async producer of Vigil's wire records; use as ``async with RecordProducer(settings) as p``."""

    def __init__(self, settings: VigilSettings, *, linger_ms: int = 5) -> None:
        self.settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            **kafka_client_options(settings),  # type: ignore[arg-type]
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
        await self._producer.send(
            topic or self.settings.topics.readings, reading.to_json(), key=key.encode()
        )

    async def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        await self._producer.send(topic, value, key=key)

    async def send_dead_letter(
        self, reason: str, value: bytes, *, topic: str, source: str, key: str | None = None,
        partition: int | None = None, offset: int | None = None,
    ) -> None:  # fmt: skip
        letter = DeadLetter.of(
            reason, value, topic=topic, partition=partition, offset=offset, key=key, source=source,
            at=time.time(),
        )  # fmt: skip
        await self._producer.send(
            self.settings.topics.dead_letters,
            letter.model_dump_json().encode(),
            key=key.encode() if key else None,
        )

    async def flush(self) -> None:
        await self._producer.flush()
