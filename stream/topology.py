"""The worker, assembled: a thin facade over the parts that each own one responsibility.

Data flows one way: input topics → :class:`~vigil.stream.intake.Intake` (Faust agents,
batching, backpressure) → :class:`~vigil.stream.batch_handler.BatchHandler` (validation,
routing, per-key state, each group's :class:`~vigil.stream.series_processor.SeriesProcessor`
with batched inference on its model thread) → :class:`~vigil.stream.batch_commit.BatchCommit`
(outputs acknowledged by Kafka → state in Redis → training → offsets acked). Alerts leave
through the alerts topic only; :mod:`vigil.alerting` delivers them. docs/architecture.md is
the map.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import faust
import redis.asyncio as aioredis

from vigil import repeat_filter
from vigil.alerting import alerting_service
from vigil.outage import FaultTolerance
from vigil.records import ModelAnnouncement
from vigil.settings import VigilSettings
from vigil.stream.batch_commit import BatchCommit
from vigil.stream.batch_handler import BatchHandler
from vigil.stream.group_runtime import GroupRuntime
from vigil.stream.headroom import LoopHeadroom
from vigil.stream.intake import REVOCATION_GRACE_S, Intake
from vigil.stream.key_cache import KeyStateCache
from vigil.stream.metrics import VigilMetrics
from vigil.stream.output_producer import OutputProducer
from vigil.stream.state_store import StateStore
from vigil.stream.web import add_pages

log = logging.getLogger("vigil.stream")


def faust_broker_options(settings: VigilSettings) -> dict[str, Any]:
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    ssl_context = None
    if "SSL" in protocol:
        from aiokafka.helpers import create_ssl_context

        ssl_context = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    if protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        credentials = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password else None,
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            ssl_context=ssl_context,
        )
        return {"broker_credentials": credentials}
    return {"broker_credentials": ssl_context}


def faust_app_options(settings: VigilSettings, web_port: int | None = None) -> dict[str, Any]:
    """How Vigil configures Faust (shared with the benchmark's bare passthrough app)."""
    batch, stream = settings.batch, settings.stream
    return {
        "broker": [f"kafka://{host}" for host in settings.bootstrap.split(",")],
        "store": "memory://",
        # Faust makes a data directory even with in-memory tables; by default "<app id>-data"
        # in the working directory, one per app id, left behind by every run
        "datadir": str(Path(tempfile.gettempdir()) / "faust-{conf.name}-data"),
        "web_port": web_port or settings.web_port,
        "web_host": settings.web_host,  # canonical URL; web_bind is the interface listened on
        "web_bind": settings.web_host,
        # Faust's /router and /table pages expose cluster topology and table data; Vigil serves
        # neither (faust's APP_WEB_ROUTER_ENABLED / APP_WEB_TABLES_ENABLED turn them back on)
        "web_router_enabled": False,
        "web_tables_enabled": False,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "topic_partitions": settings.topics.partitions,
        "topic_replication_factor": settings.topics.replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_every": 500,
        "broker_commit_interval": 1.0,
        "producer_acks": -1,
        # On stop Faust would wait for every unacked event; during an outage that is forever.
        # VigilStream.finish_before_stop waits for the batches being committed instead, a few
        # seconds at most; what is still unacked then is redelivered to the next owner.
        "stream_wait_empty": False,
        "broker_session_timeout": stream.session_timeout_s,
        "broker_heartbeat_interval": max(1.0, stream.session_timeout_s / 4),
        # the bound on in-worker buffering: a full buffer pauses its busiest partitions
        "stream_buffer_maxsize": max(batch.max_queue, batch.max_size),
        # records polled but not yet let in by the in-worker limit wait in Faust's fetch loop,
        # counted neither as lag nor as inside the worker: keep polls small
        "broker_max_poll_records": min(batch.max_size, 32),
        **faust_broker_options(settings),
    }


class VigilStream:
    """Owns the Faust app and wires the worker's parts together."""

    def __init__(self, settings: VigilSettings, *, web_port: int | None = None) -> None:
        self.settings = settings
        self.metrics = VigilMetrics()
        self.app = faust.App(settings.app_id, **faust_app_options(settings, web_port))
        self.redis = aioredis.Redis.from_url(settings.redis)
        self.store = StateStore(
            self.redis,
            settings.app_id,
            state_ttl_s=settings.stream.state_ttl_s,
            history=settings.web_history,  # chart points, written with the states
        )
        self.faults = FaultTolerance(on_change=self._outage_changed)
        self.groups = {
            g.name: GroupRuntime(g, settings, self.metrics, announce=self.announce)
            for g in settings.groups
        }
        self.keys = KeyStateCache(
            self.store, self.metrics, self.groups, evict_after_s=settings.stream.idle_key_evict_s
        )
        self.handler = BatchHandler(
            settings, self.groups, self.keys, self.store, self.faults, self.metrics
        )
        self.outputs = OutputProducer(settings)
        self.intake = Intake(
            self.app,
            settings,
            self.handler,
            lambda ack: BatchCommit(
                self.outputs.send,
                self.store,
                self.faults,
                self.metrics,
                ack,
                dead_letter_topic=settings.topics.dead_letters,
            ),
            self.keys,
            self.metrics,
        )
        self.model_versions = self.app.topic(settings.topics.model_versions)
        self.app.service(_GroupServices(self))  # type: ignore[arg-type]  # an instance works
        if settings.alerting.in_worker:  # alerts from the alerts topic to the log and webhooks
            self.app.service(alerting_service(settings))  # type: ignore[arg-type]
        self.app.task(self._watch_loop_lag)
        self.app.timer(5.0)(self._measure_consumer_lag)
        self.headroom = LoopHeadroom()
        self.app.timer(1.0)(self._measure_headroom)
        add_pages(
            self.app, settings, self.metrics, self.store, self.redis, self.readiness, self.keys
        )

    async def announce(self, announcement: ModelAnnouncement) -> None:
        await self.model_versions.send(
            key=announcement.group.encode(), value=announcement.model_dump_json().encode()
        )

    def _outage_changed(self, service: str, down: bool) -> None:
        self.metrics.outage.labels(service).set(1 if down else 0)

    async def readiness(self) -> dict[str, bool]:
        """Partitions assigned, Redis and Kafka reachable, every group's model loaded."""
        try:
            redis_ok = bool(await asyncio.wait_for(self.redis.ping(), 2.0))
        except Exception:
            redis_ok = False
        try:
            assigned = bool(self.app.consumer.assignment())
        except Exception:
            assigned = False
        return {
            "partitions_assigned": assigned,
            "redis": redis_ok and "redis" not in self.faults.down,
            "kafka": "kafka" not in self.faults.down and await self._broker_answers(),
            "models_loaded": all(g.ready for g in self.groups.values()),
        }

    async def _broker_answers(self) -> bool:
        """Whether the producer's client reaches a broker now (a cheap metadata request)."""
        try:
            producer: Any = self.app.producer
            client = producer._producer.client  # aiokafka's client inside Faust's producer
            return bool(await asyncio.wait_for(client.fetch_all_metadata(), 2.0))
        except Exception:
            return False

    async def finish_before_stop(self) -> None:
        """Let the batches being committed finish (a few seconds at most), then give up the
        ones an outage holds: they stay unacked, so Kafka redelivers their events."""
        committing = set(self.intake.committing)
        if committing:
            await asyncio.wait(committing, timeout=REVOCATION_GRACE_S)
        self.faults.abandon.set()

    def queue_depth(self) -> int:
        return sum(g.queue_depth for g in self.groups.values())

    # ---- housekeeping -------------------------------------------------------------------
    async def _watch_loop_lag(self) -> None:
        """How late a 100 ms sleep wakes up: the proof that nothing blocks the event loop."""
        loop = asyncio.get_running_loop()
        worst: list[tuple[float, float]] = []
        while True:
            start = loop.time()
            await asyncio.sleep(0.1)
            lag = max(0.0, loop.time() - start - 0.1)
            now = time.monotonic()
            worst = [(t, v) for t, v in worst if now - t < 60] + [(now, lag)]
            self.metrics.loop_lag.set(lag)
            self.metrics.loop_lag_max.set(max(v for _, v in worst))

    async def _measure_headroom(self) -> None:
        """Utilisation, the sustainable rate, and the trainers' CPU shares that follow from it."""
        seen = self.headroom.sample(self.intake.committed_events)
        self.metrics.loop_busy.set(seen.busy)
        if seen.sustainable_per_s is not None:
            self.metrics.sustainable_rate.set(seen.sustainable_per_s)
        for name, runtime in self.groups.items():
            runtime.set_training_share(seen.training_share)
            if runtime.trainer is not None:
                self.metrics.training_share.labels(name).set(
                    seen.training_share(runtime.group.training.cpu_share)
                )

    async def _measure_consumer_lag(self) -> None:
        consumer = self.app.consumer
        assigned = consumer.assignment()
        for tp in assigned:
            try:
                position = await consumer.position(tp)
                highwater = consumer.highwater(tp)
            except Exception:  # not fetched yet
                continue
            if position is not None and highwater is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - position)
                )
        owned = {(tp.topic, str(tp.partition)) for tp in assigned}
        for labels in list(self.metrics.consumer_lag._metrics):  # revoked: no stale lag
            if tuple(labels) not in owned:
                self.metrics.consumer_lag.remove(*labels)
        self.metrics.queue_depth.set(self.queue_depth())


class _GroupServices(faust.Service):
    """Starts and stops the model groups with the worker (model load, batch thread, trainer)."""

    def __init__(self, stream: VigilStream, **kwargs: Any) -> None:
        self.stream = stream
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        repeat_filter.install()  # logging is set up by now: an outage logs lines, not floods
        await self.stream.outputs.start()
        for runtime in self.stream.groups.values():
            await runtime.start()

    async def on_stop(self) -> None:
        self.stream.faults.abandon.set()  # outage retries give up: their events stay unacked
        for runtime in self.stream.groups.values():
            await runtime.stop()
        await self.stream.outputs.stop()
        await self.stream.redis.aclose()
