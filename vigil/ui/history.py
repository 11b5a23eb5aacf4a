"""Per-key history for the web UI: a capped Redis stream per key, fed from the output topics.

The worker's commit path writes only each key's *latest* prediction (one transaction with the
states, see :mod:`vigil.stream.state_store`). A chart needs the last few hundred, so the UI keeps
its own copy, written by :class:`HistoryRecorder` — a Faust service in the worker with its own
Kafka consumer (group ``{app_id}-ui``) on the predictions, alerts and drift topics. It shares
nothing with the stream's batch path but the event loop, like the alerting service.

Layout (``U = vigil:{app_id}:ui``)::

    U:history:{key}  stream  one entry per prediction, id = the data timestamp in ms ("<ms>-1"),
                             field "p" = compact JSON {t, y, f, l, u, s, a, v}; capped at
                             HISTORY_POINTS (approximate trim), expires HISTORY_TTL_S after the
                             last write
    U:events:{key}   stream  alerts (firing/resolved) and drift events of the key, auto ids,
                             field "e" = JSON; capped at EVENTS_PER_KEY

Entry ids are data timestamps, so ``XRANGE`` by time serves the time-range selector and a
prediction read twice (a redelivery after a restart) is refused by Redis as "id not greater than
the last" instead of doubling a point. The server-sent event stream of a key page reads the same
two streams with ``XREAD BLOCK``, so any worker can serve any key's page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from vigil.connectors.producer import kafka_client_options
from vigil.settings import VigilSettings

log = logging.getLogger(__name__)

HISTORY_POINTS = 500
EVENTS_PER_KEY = 200
HISTORY_TTL_S = 7 * 86_400
RETRY_PAUSE_S = 1.0


class UiKeys:
    """Redis names of the UI's own data."""

    def __init__(self, app_id: str) -> None:
        self.prefix = f"vigil:{app_id}:ui"

    def history(self, key: str) -> str:
        return f"{self.prefix}:history:{key}"

    def events(self, key: str) -> str:
        return f"{self.prefix}:events:{key}"


def _first(values: Any) -> float | None:
    if isinstance(values, list) and values and isinstance(values[0], int | float):
        value = float(values[0])
        return value if math.isfinite(value) else None
    return None


def compact_point(prediction: dict[str, Any]) -> dict[str, Any]:
    """What the chart needs of one prediction: the observation, the one-step-ahead forecast and
    its interval (made at this point, for the next one), score, anomaly flag, model version."""
    observed = prediction.get("observed")
    return {
        "t": float(prediction["timestamp"]),
        "y": observed if isinstance(observed, int | float) else None,
        "f": _first(prediction.get("forecast")),
        "l": _first(prediction.get("lower")),
        "u": _first(prediction.get("upper")),
        "s": prediction.get("score"),
        "a": bool(prediction.get("anomaly")),
        "v": (prediction.get("provenance") or {}).get("model_version"),
    }


def alert_event(alert: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "alert",
        "alert_id": alert.get("alert_id"),
        "status": alert.get("status"),
        "severity": alert.get("severity"),
        "start": alert.get("start"),
        "end": alert.get("end"),
        "score": alert.get("score"),
    }


def drift_event(drift: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "drift",
        "timestamp": drift.get("timestamp"),
        "direction": drift.get("direction"),
        "method": drift.get("method"),
        "statistic": drift.get("statistic"),
    }


def entry_id(ts: float) -> str:
    """The stream id of a point: its data time in ms (sequence 1, so time 0 is still valid)."""
    return f"{max(0, int(ts * 1000))}-1"


class HistoryWriter:
    """Turns output records into pipelined writes of the per-key streams."""

    def __init__(self, redis: Redis, settings: VigilSettings) -> None:
        self.redis = redis
        self.keys = UiKeys(settings.app_id)
        self.topics = settings.topics

    async def write(self, records: list[tuple[str, bytes | None]]) -> int:
        """``(topic, value)`` pairs; returns how many entries Redis accepted."""
        pipe = self.redis.pipeline(transaction=False)
        touched: set[str] = set()
        queued = 0
        for topic, value in records:
            try:
                doc = orjson.loads(value or b"")
            except orjson.JSONDecodeError:
                continue
            if not isinstance(doc, dict) or not isinstance(doc.get("key"), str):
                continue
            key = doc["key"]
            try:
                if topic == self.topics.predictions:
                    point = compact_point(doc)
                    name = self.keys.history(key)
                    pipe.xadd(name, {"p": orjson.dumps(point)}, id=entry_id(point["t"]),
                              maxlen=HISTORY_POINTS, approximate=True)  # fmt: skip
                elif topic == self.topics.alerts:
                    name = self.keys.events(key)
                    pipe.xadd(name, {"e": orjson.dumps(alert_event(doc))},
                              maxlen=EVENTS_PER_KEY, approximate=True)  # fmt: skip
                elif topic == self.topics.drift:
                    name = self.keys.events(key)
                    pipe.xadd(name, {"e": orjson.dumps(drift_event(doc))},
                              maxlen=EVENTS_PER_KEY, approximate=True)  # fmt: skip
                else:
                    continue
            except (KeyError, TypeError, ValueError):
                continue
            touched.add(name)
            queued += 1
        for name in touched:
            pipe.expire(name, HISTORY_TTL_S)
        if not queued:
            return 0
        results = await pipe.execute(raise_on_error=False)
        # an id not above the stream's last (a redelivered record) is refused: that is the dedup
        return sum(1 for r in results[:queued] if not isinstance(r, Exception))


class HistoryRecorder(faust.Service):
    """The worker-side writer: consumes the output topics (group ``{app_id}-ui``) into Redis."""

    def __init__(self, settings: VigilSettings, **kwargs: Any) -> None:
        self.settings = settings
        self.closing = asyncio.Event()  # set on stop: open event streams end promptly
        self._redis: Redis | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._clients: list[Any] = []
        super().__init__(**kwargs)

    def closes(self, *clients: Any) -> None:
        """Redis clients (the UI's) to close when the worker stops."""
        self._clients.extend(clients)

    async def on_start(self) -> None:
        self.closing.clear()
        topics = self.settings.topics
        self._redis = Redis.from_url(self.settings.redis)
        self._consumer = AIOKafkaConsumer(
            topics.predictions, topics.alerts, topics.drift,
            bootstrap_servers=self.settings.bootstrap, group_id=f"{self.settings.app_id}-ui",
            enable_auto_commit=True, auto_offset_reset="earliest",
            **kafka_client_options(self.settings),
        )  # fmt: skip
        try:
            await self._consumer.start()
        except BaseException:
            await self._close()
            raise
        writer = HistoryWriter(self._redis, self.settings)
        self._task = asyncio.create_task(self._run(self._consumer, writer), name="vigil-ui")

    async def _run(self, consumer: AIOKafkaConsumer, writer: HistoryWriter) -> None:
        while not self.closing.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=1000)
                records = [(m.topic, m.value) for ms in batches.values() for m in ms]
                if records:
                    await writer.write(records)
            except asyncio.CancelledError:
                raise
            except (KafkaError, RedisError, OSError) as exc:  # the UI waits, the stream not
                log.warning("ui history: %s; retrying", exc)
                await asyncio.sleep(RETRY_PAUSE_S)
            except Exception:
                log.exception("ui history: batch failed; skipping it")
                await asyncio.sleep(RETRY_PAUSE_S)

    async def on_stop(self) -> None:
        self.closing.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._close()
        for client in self._clients:
            with contextlib.suppress(Exception):
                closed = client.aclose() if hasattr(client, "aclose") else client.close()
                if asyncio.iscoroutine(closed):
                    await closed

    async def _close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
