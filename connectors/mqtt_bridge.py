"""Bridge MQTT sensor topics into the readings topic.

paho-mqtt runs its network loop (connect, reconnect, keep-alive) in its own thread and hands
each message to asyncio with ``call_soon_threadsafe``; the asyncio side sends to Kafka. QoS 1
messages are acknowledged to the broker only after Kafka has acknowledged them, so with a fixed
``client_id`` (a persistent session) a bridge that dies mid-way gets the unforwarded messages
again from the broker: at-least-once from sensor to Kafka.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from vigil.connectors.producer import RecordProducer
from vigil.records import Reading

log = logging.getLogger(__name__)

SHARED_PREFIX = "$share/"
MAX_BATCH = 500


class PayloadError(ValueError):
    """An MQTT payload that is not a reading; the message is the dead-letter reason."""


def subscription_filter(pattern: str) -> str:
    """The topic filter a pattern matches against (a shared subscription minus its group)."""
    if pattern.startswith(SHARED_PREFIX):
        return pattern[len(SHARED_PREFIX) :].partition("/")[2]
    return pattern


def wildcard_segments(pattern: str, topic: str) -> list[str] | None:
    """What the ``+`` and ``#`` wildcards of ``pattern`` matched in ``topic`` (None = no match).

    ``#`` contributes the rest of the topic, joined with ``/``.
    """
    parts = subscription_filter(pattern).split("/")
    levels = topic.split("/")
    matched: list[str] = []
    for i, part in enumerate(parts):
        if part == "#":
            matched.append("/".join(levels[i:]))
            return matched
        if i >= len(levels):
            return None
        if part == "+":
            matched.append(levels[i])
        elif part != levels[i]:
            return None
    return matched if len(parts) == len(levels) else None


class TopicKeys:
    """Kafka key of an MQTT topic: a template (``{1}`` = first wildcard segment, ``{0}`` = the
    whole topic) or, with no template, the topic with ``/`` turned into ``.``."""

    def __init__(self, patterns: Sequence[str], template: str | None = None) -> None:
        if not patterns:
            raise ValueError("at least one MQTT topic pattern is needed")
        self.patterns = list(patterns)
        self.template = template
        if template is not None:
            for pattern in self.patterns:
                wildcards = sum(p in ("+", "#") for p in subscription_filter(pattern).split("/"))
                try:
                    template.format("topic", *(["segment"] * wildcards))
                except (IndexError, KeyError, ValueError) as exc:
                    raise ValueError(
                        f"key template {template!r} does not fit pattern {pattern!r}: it has "
                        f"{wildcards} wildcard(s), so only {{0}}..{{{wildcards}}} exist ({exc})"
                    ) from None

    def key(self, topic: str) -> str:
        if self.template is None:
            return topic.replace("/", ".")
        for pattern in self.patterns:
            segments = wildcard_segments(pattern, topic)
            if segments is not None:
                return self.template.format(topic, *segments)
        return topic.replace("/", ".")  # overlapping subscriptions can deliver other topics


def reading_from_payload(payload: bytes, received_at: float) -> Reading:
    """A reading from JSON ``{timestamp, value|values}`` or a bare number (stamped on receipt);
    an object without a timestamp is stamped on receipt too."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("payload is not UTF-8") from None
    try:
        body: Any = json.loads(text)
    except json.JSONDecodeError:
        raise PayloadError(f"payload {_preview(text)} is neither JSON nor a number") from None
    if body is None or (isinstance(body, int | float) and not isinstance(body, bool)):
        body = {"timestamp": received_at, "value": body}
    elif isinstance(body, dict):
        body.setdefault("timestamp", received_at)
    else:
        raise PayloadError(f"payload must be a JSON object or a number, got {type(body).__name__}")
    try:
        return Reading.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise PayloadError(f"{where}: {message}" if where else message) from None


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    qos: int
    mid: int
    received_at: float


@dataclass
class BridgeStats:
    readings: int = 0
    dead_letters: int = 0
    connects: int = 0
    per_key: dict[str, int] = field(default_factory=dict)


class MqttBridge:
    """Subscribe to MQTT topic patterns and forward readings to Kafka until stopped.

    ``await bridge.run()`` returns when :meth:`stop` is called (or raises CancelledError when
    cancelled), in both cases after flushing what it forwarded. ``subscribed`` is set once the
    broker has confirmed every subscription.
    """

    def __init__(
        self,
        producer: RecordProducer,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        patterns: Sequence[str] = ("sensors/#",),
        key_template: str | None = None,
        qos: int = 1,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        protocol: int = 5,
        receive_maximum: int = 1000,
        session_expiry_s: int = 86_400,
        topic: str | None = None,
    ) -> None:
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        if protocol not in (4, 5):
            raise ValueError(f"protocol must be 5 (MQTT 5) or 4 (MQTT 3.1.1), got {protocol}")
        if not 1 <= receive_maximum <= 65535:
            raise ValueError(f"receive_maximum must be in 1..65535, got {receive_maximum}")
        self.producer = producer
        self.host, self.port = host, port
        self.keys = TopicKeys(patterns, key_template)
        self.qos = qos
        self.persistent = client_id is not None
        self.client_id = client_id or f"vigil-bridge-{uuid.uuid4().hex[:8]}"
        self.username, self.password = username, password
        self.keepalive_s = keepalive_s
        self.protocol = protocol
        self.receive_maximum = receive_maximum
        self.session_expiry_s = session_expiry_s
        self.topic = topic or producer.settings.topics.readings
        self.stats = BridgeStats()
        self.subscribed = asyncio.Event()
        self._queue: asyncio.Queue[Incoming | None] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from any thread)."""
        if self._loop is None:
            self._queue.put_nowait(None)  # not running yet: run() will stop at once
        else:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    async def run(self) -> BridgeStats:
        self._loop = asyncio.get_running_loop()
        client = self._client()
        if self.protocol == 5:
            # Receive Maximum = how many unacknowledged messages the broker may send at once.
            # Acks wait for Kafka, so a small window (3.1.1 brokers default to 20) caps throughput.
            props = Properties(PacketTypes.CONNECT)
            props.ReceiveMaximum = self.receive_maximum
            if self.persistent:
                props.SessionExpiryInterval = self.session_expiry_s
            client.connect_async(
                self.host,
                self.port,
                keepalive=self.keepalive_s,
                clean_start=not self.persistent,
                properties=props,
            )
        else:
            client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        client.loop_start()
        try:
            while True:
                first = await self._queue.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < MAX_BATCH and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is None:
                        self._queue.put_nowait(None)  # finish this batch, then stop
                        break
                    batch.append(item)
                for message in batch:
                    await self._forward(message)
                await self.producer.flush()
                for message in batch:  # Kafka has them: now the broker may forget them
                    if message.qos > 0:
                        client.ack(message.mid, message.qos)
        finally:
            client.disconnect()
            client.loop_stop()
            await self.producer.flush()
        return self.stats

    def _client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if self.protocol == 5 else not self.persistent,
            protocol=mqtt.MQTTv5 if self.protocol == 5 else mqtt.MQTTv311,
            manual_ack=True,
        )
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        return client

    # ---- paho callbacks: run in paho's thread, so they only hand over to the event loop ----
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("mqtt: %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        self.stats.connects += 1
        log.info(
            "mqtt: connected to %s:%d, subscribing to %s", self.host, self.port, self.keys.patterns
        )
        # Subscribing on every connect restores subscriptions after a reconnect.
        client.subscribe([(pattern, self.qos) for pattern in self.keys.patterns])

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        log.warning("mqtt: cannot reach %s:%d; paho retries", self.host, self.port)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            log.error("mqtt: broker refused subscription(s): %s", failed)
            return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.subscribed.set)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        incoming = Incoming(
            message.topic, bytes(message.payload), message.qos, message.mid, time.time()
        )
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, incoming)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("mqtt: lost %s:%d (%s); paho reconnects", self.host, self.port, reason)

    # ---- asyncio side ------------------------------------------------------------------------
    async def _forward(self, message: Incoming) -> None:
        key = self.keys.key(message.topic)
        try:
            reading = reading_from_payload(message.payload, message.received_at)
        except PayloadError as exc:
            await self.producer.send_dead_letter(
                f"mqtt topic {message.topic}: {exc}",
                message.payload,
                topic=self.topic,
                source=f"mqtt:{message.topic}",
                key=key,
            )
            self.stats.dead_letters += 1
            return
        await self.producer.send_reading(key, reading, self.topic)
        self.stats.readings += 1
        self.stats.per_key[key] = self.stats.per_key.get(key, 0) + 1
