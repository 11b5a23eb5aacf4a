"""The Faust app: one agent per input topic, batches of events through the group processors.

Data flows one way: readings topic → validation → :class:`~stream.series_processor.SeriesProcessor`
(batched inference on a model thread) → predictions / alerts / drift / dead-letter topics and
Redis. Outputs are delivered to Kafka *before* the batch's state is written to Redis, offsets
are committed only *after* it, and each key's state remembers the last offset it absorbed: after
a crash the redelivered events are recognised and skipped, so nothing is lost and nothing is
counted twice in the state.

A batch runs in two halves: :meth:`VigilStream.handle` (decode, process, send) and
:meth:`VigilStream.finish` (Kafka's acknowledgements, Redis, the final ack). The agent runs the
second half of one batch while it processes the next, so the round trips to the broker and to
Redis no longer sit between two batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import faust
import redis.asyncio as aioredis
from faust.types import TP, EventT

from connectors.alert_dispatch import AlertDispatcher
from stream.backpressure import BufferPressure, InWorkerLimit
from stream.group_runtime import GroupRuntime
from stream.key_state import KeyState
from stream.metrics import VigilMetrics
from stream.series_processor import BatchOutput
from stream.state_store import StateStore, StateWrite
from stream.validation import InputEvent, Rejection, decode_event
from vigil.records import DeadLetter, ModelAnnouncement
from vigil.settings import VigilSettings

log = logging.getLogger("vigil.stream")
_T = TypeVar("_T")


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
        "web_port": web_port or settings.web_port,
        "web_host": "0.0.0.0",
        "key_serializer": "raw",
        "value_serializer": "raw",
        "topic_partitions": settings.topics.partitions,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_every": 500,
        "broker_commit_interval": 1.0,
        "producer_acks": -1,
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
    """Owns the Faust app, the model groups, the Redis state store and the metrics."""

    def __init__(self, settings: VigilSettings, *, web_port: int | None = None) -> None:
        self.settings = settings
        self.metrics = VigilMetrics()
        self.app = faust.App(settings.app_id, **faust_app_options(settings, web_port))
        self.redis = aioredis.Redis.from_url(settings.redis)
        self.store = StateStore(
            self.redis, settings.app_id, alert_stream_maxlen=settings.stream.alert_stream_maxlen
        )
        # Webhook delivery runs in the worker when receivers are configured; submit() is one
        # Redis round trip, the HTTP work happens on the dispatcher's own tasks.
        self.dispatcher = AlertDispatcher(settings, self.redis) if settings.webhooks else None
        self.groups = {g.name: GroupRuntime(g, settings, self.metrics) for g in settings.groups}
        self.states: dict[str, dict[str, KeyState]] = {name: {} for name in self.groups}
        self.pressure = BufferPressure(self.app, self.metrics)
        self.arrivals: dict[tuple[str, int, int], float] = {}  # inside the worker, by offset
        self.finishing: set[asyncio.Task[None]] = set()  # batches waiting for Kafka and Redis
        batch = settings.batch
        self.limit = InWorkerLimit(
            batch.latency_target_ms / 1000,
            floor=min(64, batch.max_size),  # smaller batches cost more than they save
            ceiling=max(batch.max_queue, batch.max_size),
        )
        self.room = asyncio.Event()  # cleared while the limit holds the fetch loop
        self.room.set()
        self._stamp_arrivals()
        t = settings.topics
        self.predictions = self.app.topic(t.predictions)
        self.alerts = self.app.topic(t.alerts)
        self.dead_letters = self.app.topic(t.dead_letters)
        self.drift = self.app.topic(t.drift)
        self.model_versions = self.app.topic(t.model_versions)
        for name in settings.input_topics():
            self._add_agent(name)
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        self.app.service(_GroupServices(self))  # type: ignore[arg-type]  # an instance works
        self.app.task(self._watch_loop_lag)
        self.app.timer(5.0)(self._measure_consumer_lag)
        self.app.timer(0.25)(self._watch_pressure)
        from stream.web import add_pages

        add_pages(self)

    # ---- agents -------------------------------------------------------------------------
    def _add_agent(self, topic_name: str) -> None:
        topic = self.app.topic(topic_name)
        batch = self.settings.batch

        async def ingest(stream: faust.StreamT) -> None:
            batches = cast(faust.Stream, stream).take_events(
                batch.max_size, within=batch.max_wait_ms / 1000
            )
            finishing: asyncio.Task[None] | None = None
            try:
                async for events in batches:
                    for event in events:  # Faust's ack after this loop body is not the last one
                        event.message.incref()
                    in_flight = await self._guarded(events, self.handle(events))
                    if finishing is not None:
                        await finishing  # batches finish in order, one behind the next
                    finishing = None
                    if in_flight is not None:
                        finishing = self._finish_soon(events, in_flight)
            finally:
                if finishing is not None:
                    await asyncio.shield(finishing)

        ingest.__name__ = f"ingest_{topic_name.replace('.', '_').replace('-', '_')}"
        self.app.agent(topic, name=f"vigil.ingest.{topic_name}")(ingest)

    def _finish_soon(
        self, events: Sequence[EventT], in_flight: InFlightBatch
    ) -> asyncio.Task[None]:
        """Run the batch's second half while the agent takes and processes the next batch."""

        async def run() -> None:
            await self._guarded(events, self.finish(in_flight))
            self._ack(events)

        task = asyncio.ensure_future(run())
        self.finishing.add(task)
        task.add_done_callback(self.finishing.discard)
        return task

    async def _guarded(self, events: Sequence[EventT], work: Awaitable[_T]) -> _T | None:
        """Never crash the agent: a batch that fails goes to dead letters (and is acked)."""
        try:
            return await work
        except Exception as exc:
            log.exception("batch of %d events failed; sending it to dead letters", len(events))
            await self._dead_letter_batch(events, exc)
            self._ack(events)
            return None

    def _ack(self, events: Sequence[EventT]) -> None:
        """The last ack of each event: only now may Kafka commit its offset."""
        on_message_out = self.app.sensors.on_message_out
        for event in events:
            message = event.message
            if not message.acked and event.ack():
                on_message_out(message.tp, message.offset, message)

    async def handle(self, events: Sequence[EventT]) -> InFlightBatch:
        """First half of a batch: decode, route, process, send the outputs (not yet acked by
        Kafka) and encode the states they lead to.

        The second half, :meth:`finish`, waits for Kafka's acknowledgements, then writes the
        states to Redis and acks the events; the agent runs it while it processes the next
        batch. Each event holds an extra reference that only :meth:`_ack` releases, so Faust
        cannot commit an offset before the state that includes its event is saved.
        """
        stage = StageClock(self.metrics.handle_stage)
        sends: list[Awaitable[Any]] = []
        routed: dict[str, list[InputEvent]] = {}
        for event in events:
            message = event.message
            decoded = decode_event(
                message.key, message.value, topic=message.topic, partition=message.partition,
                offset=message.offset, kafka_ts=message.timestamp,
            )  # fmt: skip
            if isinstance(decoded, Rejection):
                sends.append(
                    await self._dead_letter(
                        decoded,
                        message.topic,
                        message.partition,
                        message.offset,
                        message.key,
                        message.value,
                    )
                )
                continue
            group = self.settings.group_for(decoded.key, decoded.topic)
            if group is None:
                rejection = Rejection(
                    "no_group", f"no model group serves key {decoded.key!r} on {decoded.topic}"
                )
                sends.append(
                    await self._dead_letter(
                        rejection,
                        message.topic,
                        message.partition,
                        message.offset,
                        message.key,
                        message.value,
                    )
                )
                continue
            routed.setdefault(group.name, []).append(decoded)
        stage.done("decode")

        outputs: list[tuple[GroupRuntime, BatchOutput, dict[str, KeyState]]] = []
        for name, group_events in routed.items():
            runtime, states = self.groups[name], self.states[name]
            unknown = sorted({e.key for e in group_events} - states.keys())
            for key, stored in (await self.store.load_states(name, unknown)).items():
                states[key] = KeyState.from_dict(stored)
            stage.done("load_state")
            output = await runtime.processor.process(group_events, states)
            outputs.append((runtime, output, states))
            stage.done("process")

        raw_by_offset = {
            (e.message.topic, e.message.partition, e.message.offset): e.message for e in events
        }
        latest: dict[str, bytes] = {}  # newest prediction per key, for the Redis hash
        for runtime, output, _ in outputs:
            sends.extend(await self._send_outputs(runtime, output, raw_by_offset, latest))
        # Encoded now, before the next batch changes them; written once Kafka has the outputs.
        write = self.store.encode(
            {
                (runtime.group.name, key): states[key].to_dict()
                for runtime, output, states in outputs
                for key in output.touched
            },
            latest,
        )
        stage.done("send")
        return InFlightBatch(events, sends, write, outputs, raw_by_offset, stage)

    async def finish(self, batch: InFlightBatch) -> None:
        """Second half of a batch: outputs acknowledged by Kafka, then state saved in Redis."""
        stage, events = batch.stage, batch.events
        stage.resume()  # time spent waiting for the agent is no stage's
        if batch.sends:
            await asyncio.gather(*batch.sends)  # delivered before the state assuming them is saved
        stage.done("deliver")
        sent = time.time()
        self._observe_in_worker(events)
        await self.store.write(batch.write)
        self.metrics.state_writes.inc(len(batch.write.states))
        for runtime, output, _ in batch.outputs:
            for alert in output.alerts:
                if await self.store.record_alert(alert) and self.dispatcher is not None:
                    await self.dispatcher.submit(alert)
            runtime.learn(output)
            self._count(runtime.group.name, output, batch.raw_by_offset, sent)
        stage.done("save_state")
        self.metrics.handled_events.observe(len(events))
        self.limit.record(len(events), stage.total("handle"))
        self._open_room()

    async def _send_outputs(
        self,
        runtime: GroupRuntime,
        output: BatchOutput,
        raw: dict[tuple[str, int, int], Any],
        latest: dict[str, bytes],
    ) -> list[Awaitable[Any]]:
        sends = []
        for prediction in output.predictions:
            value = prediction.model_dump_json().encode()
            latest[prediction.key] = value  # predictions come in time order per key
            sends.append(await self.predictions.send(key=prediction.key.encode(), value=value))
        for alert in output.alerts:
            sends.append(
                await self.alerts.send(
                    key=alert.key.encode(), value=alert.model_dump_json().encode()
                )
            )
        for drift in output.drift:
            sends.append(
                await self.drift.send(
                    key=drift.key.encode(), value=drift.model_dump_json().encode()
                )
            )
        for event, rejection in output.rejected:
            message = raw[(event.topic, event.partition, event.offset)]
            sends.append(
                await self._dead_letter(
                    rejection,
                    event.topic,
                    event.partition,
                    event.offset,
                    message.key,
                    message.value,
                )
            )
        return sends

    async def _dead_letter(
        self,
        rejection: Rejection,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
    ) -> Awaitable[Any]:
        self.metrics.dead_letters.labels(rejection.code).inc()
        letter = DeadLetter.of(
            f"{rejection.code}: {rejection.reason}", value, topic=topic, partition=partition,
            offset=offset, key=key, source="stream", at=time.time(),
        )  # fmt: skip
        return await self.dead_letters.send(key=key, value=letter.model_dump_json().encode())

    async def _dead_letter_batch(self, events: Sequence[EventT], exc: Exception) -> None:
        """Last resort for a batch that failed: every record to dead letters, nothing dropped."""
        rejection = Rejection("internal_error", f"{type(exc).__name__}: {exc}")
        sends = []
        for event in events:
            m = event.message
            sends.append(
                await self._dead_letter(rejection, m.topic, m.partition, m.offset, m.key, m.value)
            )
        await asyncio.gather(*sends)

    def _stamp_arrivals(self) -> None:
        """Note when each record enters the worker, and hold the entrance while it is full.

        Faust's own ``message.time_in`` is set when the stream takes an event OUT of its
        buffer, so it cannot show the wait in it. The conductor's ``on_message`` is where every
        fetched record enters (the consumer gets it as its callback when the worker starts).
        While :class:`~stream.backpressure.InWorkerLimit` says the worker is full, the wrapper
        waits before letting the record in: Faust's fetch loop awaits it, so nothing more is
        taken from the Kafka client and the excess stays in Kafka as consumer lag. No partition
        is paused for this: pausing some makes the Kafka client hold back fetches for the
        others on the same broker (its prefetch back-off), and with all of them paused Faust's
        fetch loop sleeps a whole second before it looks again.
        """
        conductor = self.app.topics
        deliver = conductor.on_message
        arrivals = self.arrivals
        inputs = set(self.settings.input_topics())  # only these reach handle(), which counts out

        async def on_message(message: Any) -> None:
            if message.topic in inputs:
                if self.limit.full(len(arrivals)):
                    await self._wait_for_room()
                arrivals[(message.topic, message.partition, message.offset)] = time.monotonic()
            await deliver(message)

        conductor.on_message = on_message

    async def _wait_for_room(self) -> None:
        """Until half of the events inside are done; at most a second, never wedging the
        fetch loop (a rebalance drops events that would otherwise be waited for)."""
        self.room.clear()
        self.metrics.partition_pauses.inc(len(self.app.consumer.assignment()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.room.wait(), 1.0)
        self.room.set()

    def _open_room(self) -> None:
        if not self.room.is_set() and self.limit.drained(len(self.arrivals)):
            self.room.set()

    def _observe_in_worker(self, events: Sequence[EventT]) -> None:
        """Time each event spent in the worker: arrival (or Faust's time_in) to delivery."""
        now = time.monotonic()
        observe = self.metrics.in_worker.observe
        arrivals = self.arrivals
        for event in events:
            m = event.message
            start = arrivals.pop((m.topic, m.partition, m.offset), None) or m.time_in
            if start is not None:
                observe(max(0.0, now - start))

    def _count(
        self, group: str, output: BatchOutput, raw: dict[tuple[str, int, int], Any], sent: float
    ) -> None:
        m = self.metrics
        for outcome, count in output.outcomes.items():
            m.events.labels(group, outcome).inc(count)
        for prediction in output.predictions:
            p = prediction.provenance
            produced = raw[(p.topic, p.partition, p.offset)].timestamp
            if produced:
                m.latency.observe(max(0.0, sent - produced))
        for alert in output.alerts:
            m.alerts.labels(group, alert.severity).inc()
        if output.drift:
            m.drift_events.labels(group).inc(len(output.drift))

    async def announce(self, announcement: ModelAnnouncement) -> None:
        await self.model_versions.send(
            key=announcement.group.encode(), value=announcement.model_dump_json().encode()
        )

    def queue_depth(self) -> int:
        return sum(g.queue_depth for g in self.groups.values())

    # ---- housekeeping -------------------------------------------------------------------
    async def _watch_pressure(self) -> None:
        self._open_room()
        held = set() if self.room.is_set() else self.app.consumer.assignment()
        self.pressure.tick(held)

    async def _on_revoked(self, app: faust.App, revoked: set[TP], **_: Any) -> None:
        """Forget the state of keys whose partitions left: their new owner reads it from Redis
        (once the batches still finishing here have written theirs)."""
        if self.finishing:
            await asyncio.gather(*self.finishing, return_exceptions=True)
        partitions = {(tp.topic, tp.partition) for tp in revoked}
        for stamped in [k for k in self.arrivals if (k[0], k[1]) in partitions]:
            del self.arrivals[stamped]
        self._open_room()
        for states in self.states.values():
            for key in [k for k, s in states.items() if _owned_by(s, partitions)]:
                del states[key]

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

    async def _measure_consumer_lag(self) -> None:
        consumer = self.app.consumer
        for tp in consumer.assignment():
            try:
                position = await consumer.position(tp)
                highwater = consumer.highwater(tp)
            except Exception:  # not fetched yet
                continue
            if position is not None and highwater is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - position)
                )
        self.metrics.queue_depth.set(self.queue_depth())


@dataclass
class InFlightBatch:
    """A batch between :meth:`VigilStream.handle` and :meth:`VigilStream.finish`."""

    events: Sequence[EventT]
    sends: list[Awaitable[Any]]  # Kafka deliveries of its outputs
    write: StateWrite  # the states its events lead to, encoded
    outputs: list[tuple[GroupRuntime, BatchOutput, dict[str, KeyState]]]
    raw_by_offset: dict[tuple[str, int, int], Any]
    stage: StageClock


class StageClock:
    """Times the stages of one batch into a histogram labelled by stage (a stage that runs
    once per model group adds up over the groups)."""

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram
        self.started = self.mark = time.monotonic()
        self.spent: dict[str, float] = {}

    def resume(self) -> None:
        """The next stage starts now; time since the last one belongs to none."""
        self.mark = time.monotonic()

    def done(self, stage: str) -> None:
        now = time.monotonic()
        self.spent[stage] = self.spent.get(stage, 0.0) + now - self.mark
        self.mark = now

    def total(self, name: str) -> float:
        """Observe every stage and the whole batch (as ``name``); the whole batch's seconds."""
        whole = time.monotonic() - self.started
        for stage, seconds in self.spent.items():
            self.histogram.labels(stage).observe(seconds)
        self.histogram.labels(name).observe(whole)
        return whole


def _owned_by(state: KeyState, partitions: set[tuple[str, int]]) -> bool:
    return any(state.partition == p for _, p in partitions)


class _GroupServices(faust.Service):
    """Starts and stops the model groups with the worker (model load, batch thread, trainer)."""

    def __init__(self, stream: VigilStream, **kwargs: Any) -> None:
        self.stream = stream
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        for runtime in self.stream.groups.values():
            await runtime.start(self.stream)
        if self.stream.dispatcher is not None:
            await self.stream.dispatcher.start()

    async def on_stop(self) -> None:
        if self.stream.dispatcher is not None:
            await self.stream.dispatcher.stop()
        for runtime in self.stream.groups.values():
            await runtime.stop()
        await self.stream.redis.aclose()
