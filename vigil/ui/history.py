"""Per-key history for the web UI: capped Redis streams per key.

Chart points are written by the worker's batch commit, in the same Redis transaction as the
states (:mod:`vigil.stream.state_store`, ``VIGIL_WEB_HISTORY``): one ``XADD`` per prediction,
nothing re-read from Kafka. Alerts and drift events, a few per incident, are recorded here by
:class:`HistoryRecorder` — a Faust service in the worker with its own Kafka consumer (group
``{app_id}-ui``) on the alerts and drift topics.

Layout (``U = vigil:{app_id}:ui``)::

    U:history:{key}  stream  one entry per prediction, id = the data timestamp in ms ("<ms>-1"),
                             field "p" = compact JSON {t, y, f, l, u, s, a, v}; capped at
                             HISTORY_POINTS (approximate trim), expires HISTORY_TTL_S after the
                             last write
    U:events:{key}   stream  alerts (firing/resolved) and drift events of the key, auto ids,
                             field "e" = JSON; capped at EVENTS_PER_KEY

Entry ids are data timestamps, so ``XRANGE`` by time serves the time-range selector and a
prediction made twice (a redelivery after a restart) is refused by Redis as "id not greater than
the last" instead of doubling a point. The server-sent event stream of a key page reads the same
two streams with ``XREAD BLOCK``, so any worker can serve any key's page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from vigil.connectors.producer import kafka_client_options
from vigil.settings import VigilSettings
from vigil.stream.state_store import HISTORY_POINTS, HISTORY_TTL_S

__all__ = ["HISTORY_POINTS", "HISTORY_TTL_S", "HistoryRecorder", "HistoryWriter", "UiKeys"]

log = logging.getLogger(__name__)

EVENTS_PER_KEY = 200
RETRY_PAUSE_S = 1.0


class UiKeys:
    """Redis names of the UI's own data."""

    def __init__(self, app_id: str) -> None:
        self.prefix = f"vigil:{app_id}:ui"

    def history(self, key: str) -> str:
        return f"{self.prefix}:history:{key}"

    def events(self, key: str) -> str:
        return f"{self.prefix}:events:{key}"


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
                if topic == self.topics.alerts:
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
        return sum(1 for r in results[:queued] if not isinstance(r, Exception))


class HistoryRecorder(faust.Service):
    """The worker-side writer: consumes the alerts and drift topics (group ``{app_id}-ui``)."""

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
            topics.alerts, topics.drift,
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
