"""Where records enter the worker: one Faust agent per input topic, batching and backpressure.

Each agent takes batches (``take_events``), has :class:`~vigil.stream.batch_handler.BatchHandler`
turn a batch into outputs and states, and hands the result to
:class:`~vigil.stream.batch_commit.BatchCommit`, which runs while the agent handles the next
batch (at most one batch committing behind the one being handled; batches commit in order).
Each event holds an extra reference that only the commit's final ack releases, so Faust cannot
commit an offset before the state that includes its event is saved.

Backpressure, two layers:

* Faust's bounded stream buffers (``stream_buffer_maxsize``): a full buffer stops fetching its
  partition; :class:`IntakeSensor` counts those moments (``vigil_buffer_full_total``).
* :class:`~vigil.stream.backpressure.InWorkerLimit` bounds the events inside the worker by
  *time*: once more are inside than it finishes within the latency target, the conductor's
  ``on_message`` (where every fetched record enters) waits before letting the next one in, so
  the excess stays in Kafka as consumer lag. No partition is paused for this: pausing some makes
  the Kafka client hold back fetches for the others, and with all paused Faust's fetch loop
  sleeps a whole second.

A batch whose Kafka or Redis work meets an outage waits it out inside the commit; the agent
stops taking events meanwhile, so the buffers fill, fetching stops and the events wait in
Kafka. On revocation or shutdown, commits still waiting are abandoned unacked: their events are
redelivered to the partitions' next owner, which loads the last saved state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import faust
from faust.sensors import Sensor
from faust.types import TP, EventT

from vigil.outage import Abandoned
from vigil.settings import VigilSettings
from vigil.stream.backpressure import InWorkerLimit
from vigil.stream.batch_commit import BatchCommit
from vigil.stream.batch_handler import BatchHandler, HandledBatch
from vigil.stream.key_cache import KeyStateCache
from vigil.stream.metrics import VigilMetrics

log = logging.getLogger("vigil.intake")
REVOCATION_GRACE_S = 5.0  # how long a rebalance waits for commits before abandoning them


class IntakeSensor(Sensor):
    """Faust's own hook for its flow control: a stream buffer that filled up."""

    def __init__(self, metrics: VigilMetrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics

    def on_topic_buffer_full(self, tp: TP) -> None:
        self.metrics.buffer_full.labels(tp.topic).inc()


class Intake:
    def __init__(
        self,
        app: faust.App,
        settings: VigilSettings,
        handler: BatchHandler,
        committer: Callable[[Callable[[Sequence[Any]], None]], BatchCommit],
        keys: KeyStateCache,
        metrics: VigilMetrics,
    ) -> None:
        self.app = app
        self.settings = settings
        self.handler = handler
        self.commit = committer(self._ack)
        self.keys = keys
        self.metrics = metrics
        self.arrivals: dict[tuple[str, int, int], float] = {}  # inside the worker, by offset
        self.committing: set[asyncio.Task[None]] = set()  # batches waiting for Kafka and Redis
        self.committed_events = 0  # events whose batch committed, in all (for the rate)
        batch = settings.batch
        self.limit = InWorkerLimit(
            batch.latency_target_ms / 1000,
            floor=min(64, batch.max_size),  # smaller batches cost more than they save
            ceiling=max(batch.max_queue, batch.max_size),
        )
        self.room = asyncio.Event()  # cleared while the limit holds the fetch loop
        self.room.set()
        app.sensors.add(IntakeSensor(metrics))
        self._gate_fetched_records()
        for name in settings.input_topics():
            self._add_agent(name)
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        app.timer(0.25)(self._tick)

    # ---- agents -------------------------------------------------------------------------
    def _add_agent(self, topic_name: str) -> None:
        topic = self.app.topic(topic_name)
        batch = self.settings.batch

        async def ingest(stream: faust.StreamT) -> None:
            batches = cast(faust.Stream, stream).take_events(
                batch.max_size, within=batch.max_wait_ms / 1000
            )
            committing: asyncio.Task[None] | None = None
            try:
                async for events in batches:
                    for event in events:  # Faust's ack after this loop body is not the last one
                        event.message.incref()
                    handled = await self.handler.handle(events)
                    if committing is not None:
                        await committing  # batches commit in order, one behind the next
                    committing = self._commit_soon(handled)
            finally:  # stopping: let the last commit finish, unless an outage holds it
                if committing is not None:
                    done, _ = await asyncio.wait({committing}, timeout=REVOCATION_GRACE_S)
                    if not done:
                        committing.cancel()  # unacked: Kafka redelivers its events

        ingest.__name__ = f"ingest_{topic_name.replace('.', '_').replace('-', '_')}"
        self.app.agent(topic, name=f"vigil.ingest.{topic_name}")(ingest)

    def _commit_soon(self, batch: HandledBatch) -> asyncio.Task[None]:
        async def run() -> None:
            try:
                await self.commit.commit(batch)
            except (Abandoned, asyncio.CancelledError):
                log.warning("batch of %d events abandoned unacked; Kafka redelivers it",
                            len(batch.events))  # fmt: skip
                return
            except Exception as exc:
                # Not an outage (those are waited out) but a bug: its events can be neither
                # acked (their state is not saved) nor left unacked (their partitions would
                # commit nothing again). Crash: the restart redelivers them.
                log.critical("committing a batch failed; stopping the worker", exc_info=True)
                await self.app.crash(exc)
                return
            self._observe_in_worker(batch.events)
            self.committed_events += len(batch.events)
            self.metrics.handled_events.observe(len(batch.events))
            self.limit.record(len(batch.events), batch.stage.total("handle"))
            self._open_room()

        task = asyncio.ensure_future(run())
        self.committing.add(task)
        task.add_done_callback(self.committing.discard)
        return task

    def _ack(self, events: Sequence[EventT]) -> None:
        """The last ack of each event: only now may Kafka commit its offset."""
        on_message_out = self.app.sensors.on_message_out
        for event in events:
            message = event.message
            if not message.acked and event.ack():
                on_message_out(message.tp, message.offset, message)

    # ---- the in-worker limit ------------------------------------------------------------
    def _gate_fetched_records(self) -> None:
        """Note when each record enters the worker, and hold the entrance while it is full.

        Faust's ``message.time_in`` is set when the stream takes an event OUT of its buffer, so
        it cannot show the wait in it; the conductor's ``on_message`` is where every fetched
        record enters (the consumer gets it as its callback when the worker starts).
        """
        conductor = self.app.topics
        deliver = conductor.on_message
        arrivals = self.arrivals
        inputs = set(self.settings.input_topics())

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
        self.metrics.intake_holds.inc()
        self.metrics.intake_held.set(1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.room.wait(), 1.0)
        self.room.set()
        self.metrics.intake_held.set(0)

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

    # ---- housekeeping -------------------------------------------------------------------
    async def _tick(self) -> None:
        self._open_room()
        if not self.committing:  # no batch between processing and its state write
            self.keys.evict_idle()

    async def _on_revoked(self, app: faust.App, revoked: set[TP], **_: Any) -> None:
        """Let commits in flight finish (briefly), then forget what the revoked partitions fed:
        their new owner reads it from Redis."""
        if self.committing:
            pending = set(self.committing)
            unfinished = (await asyncio.wait(pending, timeout=REVOCATION_GRACE_S))[1]
            for task in unfinished:  # an outage: give them up unacked, Kafka redelivers
                task.cancel()
        sources = {f"{tp.topic}:{tp.partition}" for tp in revoked}
        partitions = {(tp.topic, tp.partition) for tp in revoked}
        for stamped in [k for k in self.arrivals if (k[0], k[1]) in partitions]:
            del self.arrivals[stamped]
        self._open_room()
        self.keys.forget_sources(sources)
