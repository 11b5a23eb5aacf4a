"""What the operator commands (`vigil tail`, `vigil state`, `vigil dlq`) share: one red line
instead of a traceback when Kafka or Redis fails, naming the address tried with secrets masked,
and the Kafka clients built with the configured security options."""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import typer

from vigil.records import parse_timestamp
from vigil.redaction import mask_credentials, scrub
from vigil.settings import VigilSettings, settings_secrets

KAFKA_TIMEOUT_MS = 10_000  # how long a command waits for a broker before giving up


def fail(settings: VigilSettings | None, message: object, code: int = 1) -> typer.Exit:
    """Print one red line (secrets masked) and return the Exit for the caller to raise."""
    secrets = settings_secrets(settings) if settings is not None else []
    text = " ".join(str(message).split())  # one line, whatever the client's message held
    typer.secho(scrub(text, secrets), fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def kafka_address(settings: VigilSettings) -> str:
    return mask_credentials(settings.bootstrap)


def redis_address(settings: VigilSettings) -> str:
    return mask_credentials(settings.redis)


@contextmanager
def service_errors(settings: VigilSettings) -> Iterator[None]:
    """Turn a Kafka or Redis failure inside the block into one line and exit code 1."""
    from aiokafka.errors import KafkaError
    from redis.exceptions import RedisError

    quiet_clients()
    try:
        yield
    except typer.Exit:
        raise
    except RedisError as exc:
        raise fail(settings, f"cannot use Redis at {redis_address(settings)}: {exc}") from None
    except (KafkaError, ssl.SSLError) as exc:
        what = str(exc) or type(exc).__name__
        raise fail(
            settings, f"cannot use Kafka at {kafka_address(settings)}: {what}"
            " (check VIGIL_KAFKA_BOOTSTRAP and the VIGIL_KAFKA_SECURITY_PROTOCOL/SASL settings)"
        ) from None  # fmt: skip
    except (TimeoutError, OSError) as exc:
        what = str(exc) or type(exc).__name__
        raise fail(
            settings,
            f"no answer from Kafka at {kafka_address(settings)} or Redis at"
            f" {redis_address(settings)}: {what}",
        ) from None


def kafka_options(settings: VigilSettings) -> dict[str, Any]:
    """Bootstrap, security options and short timeouts for a command's Kafka client."""
    from vigil.connectors.producer import kafka_client_options

    return {
        "bootstrap_servers": settings.bootstrap,
        "request_timeout_ms": KAFKA_TIMEOUT_MS,
        **kafka_client_options(settings),
    }


def when(ts: float | None) -> str:
    """Epoch seconds as a compact UTC time for one-line output."""
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return repr(ts)


_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: epoch seconds, an ISO-8601 time, or an age such as ``30m``, ``2h``, ``7d``."""
    match = _AGO.match(text.strip())
    if match:
        return (time.time() if now is None else now) - float(match[1]) * _UNIT_S[match[2]]
    try:
        return parse_timestamp(float(text) if _is_number(text) else text)
    except ValueError as exc:
        raise typer.BadParameter(f"{exc} (or an age such as 30m, 2h, 7d)") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


async def topic_partitions(consumer: Any, topic: str) -> list[int]:
    """The partitions of ``topic`` ([] if it does not exist), from fresh cluster metadata: a
    consumer without a subscription has none of its own yet."""
    known = consumer.partitions_for_topic(topic)
    if not known:
        cluster = await consumer._client.fetch_all_metadata()  # aiokafka: no public equivalent
        known = cluster.partitions_for_topic(topic)
    return sorted(known or ())


async def started_consumer(settings: VigilSettings) -> Any:
    """A started consumer without a group (nothing committed); closed again if it cannot start,
    so a failure leaves no "Unclosed AIOKafkaConsumer" noise behind the one-line message."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **kafka_options(settings))
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()
        raise
    await asyncio.sleep(0)  # let its no-group task start: stop() right away would raise
    return consumer


def quiet_clients() -> None:
    """Commands report failures in one line of their own: the clients' log lines would repeat
    them (aiokafka logs every failed connection attempt at ERROR)."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
