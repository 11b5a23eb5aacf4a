"""A market feed over WebSocket: JSON trades or quotes in, readings keyed by symbol out.

Field names are configurable (dotted paths reach into nested objects), so one class serves most
exchanges' public feeds. When the connection drops the feed reconnects with capped exponential
back-off and jitter (so a fleet of feeds does not reconnect in lockstep), and sends its subscribe
message again on every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from vigil.connectors.producer import RecordProducer
from vigil.records import Reading, parse_timestamp

log = logging.getLogger(__name__)


class MessageError(ValueError):
    """A message (or one item of it) that is not a trade or quote; the text is the reason."""


@dataclass(frozen=True)
class QuoteFields:
    """Where a message keeps what a reading needs. With ``bid`` and ``ask`` set the value is the
    mid price; otherwise ``price``. ``timestamp=None`` stamps readings on receipt. ``items``
    names a list inside the message that holds the trades; ``only`` keeps messages whose fields
    equal the given values (e.g. ``{"type": "trade"}``) and ignores the rest (heartbeats)."""

    symbol: str = "symbol"
    price: str = "price"
    bid: str | None = None
    ask: str | None = None
    timestamp: str | None = "timestamp"
    items: str | None = None
    only: dict[str, str] = field(default_factory=dict)
    key_prefix: str = ""

    def __post_init__(self) -> None:
        if (self.bid is None) != (self.ask is None):
            raise ValueError("give both bid and ask fields (for the mid price) or neither")


_ABSENT = object()


def field_at(message: Any, path: str) -> Any:
    """The value at a dotted path (``data.p``), or a sentinel when any step is missing."""
    current = message
    for step in path.split("."):
        if not isinstance(current, dict) or step not in current:
            return _ABSENT
        current = current[step]
    return current


def _number(message: Any, path: str) -> float:
    raw = field_at(message, path)
    if raw is _ABSENT or raw is None:
        raise MessageError(f"no {path!r} field")
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise MessageError(f"{path} {raw!r} is not a number")
    try:
        number = float(raw)
    except ValueError:
        raise MessageError(f"{path} {raw!r} is not a number") from None
    if not math.isfinite(number):
        raise MessageError(f"{path} {raw!r} is not finite")
    return number


def parse_item(item: Any, fields: QuoteFields, received_at: float) -> tuple[str, Reading]:
    """Key and reading of one trade or quote."""
    if not isinstance(item, dict):
        raise MessageError(f"expected a JSON object, got {type(item).__name__}")
    symbol = field_at(item, fields.symbol)
    if symbol is _ABSENT or symbol is None or str(symbol).strip() == "":
        raise MessageError(f"no {fields.symbol!r} field")
    if fields.bid is not None and fields.ask is not None:
        bid, ask = _number(item, fields.bid), _number(item, fields.ask)
        if bid > ask:
            raise MessageError(f"crossed quote: bid {bid} above ask {ask}")
        value = (bid + ask) / 2
    else:
        value = _number(item, fields.price)
    if fields.timestamp is None:
        ts = received_at
    else:
        raw_ts = field_at(item, fields.timestamp)
        if raw_ts is _ABSENT or raw_ts is None:
            raise MessageError(f"no {fields.timestamp!r} field")
        if isinstance(raw_ts, str):
            with contextlib.suppress(ValueError):  # not a number: ISO-8601, parsed below
                raw_ts = float(raw_ts)  # epoch seconds or milliseconds sent as text
        try:
            ts = parse_timestamp(raw_ts)
        except ValueError as exc:
            raise MessageError(f"{fields.timestamp}: {exc}") from None
    return fields.key_prefix + str(symbol).strip(), Reading.model_validate(
        {"timestamp": ts, "value": value}
    )


def parse_message(
    raw: str | bytes, fields: QuoteFields, received_at: float
) -> list[tuple[str, Reading] | MessageError]:
    """Every trade in one message, or per item the reason it is not one. Messages that ``only``
    filters out give an empty list; a message that is not JSON gives one error."""
    try:
        message = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return [MessageError("message is not JSON")]
    if isinstance(message, dict) and any(
        str(field_at(message, name)) != want for name, want in fields.only.items()
    ):
        return []
    if fields.items is not None:
        inner = field_at(message, fields.items)
        if not isinstance(inner, list):
            return [MessageError(f"no list at {fields.items!r}")]
        items: list[Any] = inner
    else:
        items = message if isinstance(message, list) else [message]
    results: list[tuple[str, Reading] | MessageError] = []
    for item in items:
        try:
            results.append(parse_item(item, fields, received_at))
        except MessageError as exc:
            results.append(exc)
    return results


class Backoff:
    """Exponential back-off with jitter, capped: waits fall in ``[base*(1-jitter), base]`` where
    base doubles (``factor``) from ``initial`` up to ``cap``."""

    def __init__(
        self,
        initial: float = 0.5,
        cap: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial <= cap or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("need 0 < initial <= cap, factor >= 1 and 0 <= jitter <= 1")
        self.initial, self.cap, self.factor, self.jitter = initial, cap, factor, jitter
        self.rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        base = min(self.cap, self.initial * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return base * (1 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class FeedStats:
    readings: int = 0
    dead_letters: int = 0
    ignored: int = 0
    connections: int = 0
    failed_attempts: int = 0
    per_key: dict[str, int] = field(default_factory=dict)


class WebSocketFeed:
    """Read a WebSocket feed into Kafka until stopped; reconnect whenever it drops.

    ``await feed.run()`` returns after :meth:`stop` (or raises CancelledError when cancelled),
    in both cases after flushing. ``connected`` is set while a connection is up.
    """

    def __init__(
        self,
        producer: RecordProducer,
        url: str,
        *,
        fields: QuoteFields | None = None,
        subscribe: str | dict[str, Any] | list[Any] | None = None,
        backoff: Backoff | None = None,
        open_timeout_s: float = 10.0,
        proxy: str | Literal[True] | None = None,
        topic: str | None = None,
    ) -> None:
        self.producer = producer
        self.url = url
        self.fields = fields or QuoteFields()
        self.subscribe = (
            subscribe if subscribe is None or isinstance(subscribe, str) else json.dumps(subscribe)
        )
        self.backoff = backoff or Backoff()
        self.open_timeout_s = open_timeout_s
        self.proxy = proxy  # None = connect directly; True = use the *_PROXY variables
        self.topic = topic or producer.settings.topics.readings
        self.stats = FeedStats()
        self.connected = asyncio.Event()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> FeedStats:
        reader = asyncio.create_task(self._read_forever())
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                reader.result()  # a bug in the feed surfaces here rather than vanishing
        finally:
            for task in (reader, stopper):
                task.cancel()
            await asyncio.gather(reader, stopper, return_exceptions=True)
            await self.producer.flush()
        return self.stats

    async def _read_forever(self) -> None:
        while True:
            try:
                async with connect(
                    self.url, open_timeout=self.open_timeout_s, proxy=self.proxy
                ) as ws:
                    self.stats.connections += 1
                    log.info("websocket: connected to %s", self.url)
                    if self.subscribe is not None:
                        await ws.send(self.subscribe)
                    self.connected.set()
                    async for raw in ws:
                        self.backoff.reset()  # a message proves the link works
                        await self._handle(raw)
                log.warning("websocket: %s closed the connection", self.url)
            except InvalidURI:
                raise
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
                if not self.connected.is_set():
                    self.stats.failed_attempts += 1
                log.warning("websocket: %s: %s", self.url, exc or type(exc).__name__)
            self.connected.clear()
            delay = self.backoff.next_delay()
            log.info("websocket: reconnecting in %.2f s", delay)
            await asyncio.sleep(delay)

    async def _handle(self, raw: str | bytes) -> None:
        results = parse_message(raw, self.fields, time.time())
        if not results:
            self.stats.ignored += 1
        for result in results:
            if isinstance(result, MessageError):
                original = raw.encode() if isinstance(raw, str) else raw
                await self.producer.send_dead_letter(
                    f"websocket {self.url}: {result}",
                    original,
                    topic=self.topic,
                    source="websocket",
                )
                self.stats.dead_letters += 1
                continue
            key, reading = result
            await self.producer.send_reading(key, reading, self.topic)
            self.stats.readings += 1
            self.stats.per_key[key] = self.stats.per_key.get(key, 0) + 1
