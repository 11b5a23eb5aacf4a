"""From a batch of Kafka records to the records it produces and the states it leads to.

:meth:`BatchHandler.handle` decodes and routes each record to its model group, brings the
states of keys it has not seen from Redis, runs each group's
:class:`~vigil.stream.series_processor.SeriesProcessor` and serialises what comes out: output
records for Kafka and the new states for Redis. It sends nothing and acks nothing: that is
:class:`~vigil.stream.batch_commit.BatchCommit`'s job, in its fixed order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from vigil.outage import FaultTolerance
from vigil.records import DeadLetter
from vigil.settings import VigilSettings
from vigil.stream.group_runtime import GroupRuntime
from vigil.stream.key_cache import KeyStateCache
from vigil.stream.metrics import VigilMetrics
from vigil.stream.series_processor import BatchOutput
from vigil.stream.source_position import SourcePosition
from vigil.stream.stage_clock import StageClock
from vigil.stream.state_store import StateStore, StateWrite
from vigil.stream.validation import InputEvent, Rejection, decode_event

log = logging.getLogger("vigil.handler")


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One record for an output topic, with the input record it came from."""

    topic: str
    key: bytes | None
    value: bytes
    source: SourcePosition
    dead_letter: bool = False


@dataclass
class HandledBatch:
    """A batch between :class:`BatchHandler` and :class:`~vigil.stream.batch_commit.BatchCommit`."""

    events: Sequence[Any]  # Faust events, acked last
    records: list[OutputRecord]
    write: StateWrite  # the states its events lead to, encoded
    outputs: list[tuple[GroupRuntime, BatchOutput]]
    produced_at: list[float]  # Kafka timestamps of the events that got a prediction
    stage: StageClock
    rejected: dict[str, int] = field(default_factory=dict)  # dead letters by reason code


class BatchHandler:
    def __init__(
        self,
        settings: VigilSettings,
        groups: dict[str, GroupRuntime],
        keys: KeyStateCache,
        store: StateStore,
        faults: FaultTolerance,
        metrics: VigilMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.groups = groups
        self.keys = keys
        self.store = store
        self.faults = faults
        self.metrics = metrics
        self.clock = clock
        topics = settings.topics
        self.topics = (topics.predictions, topics.alerts, topics.drift, topics.dead_letters)

    async def handle(self, events: Sequence[Any]) -> HandledBatch:
        stage = StageClock(self.metrics.handle_stage)
        records: list[OutputRecord] = []
        rejected: dict[str, int] = {}
        routed: dict[str, list[InputEvent]] = {}
        raw: dict[SourcePosition, Any] = {}
        for event in events:
            m = event.message
            position = SourcePosition(m.topic, m.partition, m.offset)
            raw[position] = m
            decoded = decode_event(
                m.key, m.value, topic=m.topic, partition=m.partition, offset=m.offset,
                kafka_ts=m.timestamp,
            )  # fmt: skip
            if isinstance(decoded, InputEvent):
                group = self.settings.group_for(decoded.key, decoded.topic)
                if group is not None:
                    routed.setdefault(group.name, []).append(decoded)
                    continue
                decoded = Rejection(
                    "no_group", f"no model group serves key {decoded.key!r} on {decoded.topic}"
                )
            records.append(self._dead_letter(decoded, position, m.key, m.value, rejected))
        stage.done("decode")

        outputs: list[tuple[GroupRuntime, BatchOutput]] = []
        for name, group_events in routed.items():
            keys = {e.key for e in group_events}
            await self.faults.retry(lambda: self.keys.load(name, keys))  # noqa: B023
            stage.done("load_state")
            runtime = self.groups[name]
            try:
                output = await runtime.processor.process(group_events, self.keys.of(name))
            except Exception as exc:  # the whole group failed (e.g. its model): not one key
                log.exception("group %s: a batch of %d events failed; dead-lettering them",
                              name, len(group_events))  # fmt: skip
                self.keys.forget(name, keys)  # half-updated: reload the saved states
                failure = Rejection("processing_error", f"{type(exc).__name__}: {exc}"[:500])
                for e in group_events:
                    position = SourcePosition(e.topic, e.partition, e.offset)
                    m = raw[position]
                    records.append(self._dead_letter(failure, position, m.key, m.value, rejected))
                continue
            self.keys.forget(name, output.failed)
            outputs.append((runtime, output))
            stage.done("process")

        latest: dict[str, bytes] = {}
        produced_at: list[float] = []
        predictions, alerts, drift, _ = self.topics
        for _runtime, output in outputs:
            for p in output.predictions:
                value = p.model_dump_json().encode()
                latest[p.key] = value  # predictions come in time order per key
                position = SourcePosition(p.provenance.topic, p.provenance.partition,
                                          p.provenance.offset)  # fmt: skip
                records.append(OutputRecord(predictions, p.key.encode(), value, position))
                if raw[position].timestamp:
                    produced_at.append(raw[position].timestamp)
            for a in output.alerts:
                position = SourcePosition(a.provenance.topic, a.provenance.partition,
                                          a.provenance.offset)  # fmt: skip
                records.append(
                    OutputRecord(alerts, a.key.encode(), a.model_dump_json().encode(), position)
                )
            for d in output.drift:
                position = SourcePosition(d.provenance.topic, d.provenance.partition,
                                          d.provenance.offset)  # fmt: skip
                records.append(
                    OutputRecord(drift, d.key.encode(), d.model_dump_json().encode(), position)
                )
            for event, rejection in output.rejected:
                position = SourcePosition(event.topic, event.partition, event.offset)
                m = raw[position]
                records.append(self._dead_letter(rejection, position, m.key, m.value, rejected))
        # Encoded now, before the next batch changes them; written once Kafka has the outputs.
        write = self.store.encode(
            {
                (runtime.group.name, key): self.keys.of(runtime.group.name)[key].to_dict()
                for runtime, output in outputs
                for key in output.touched
            },
            latest,
            [p for _runtime, output in outputs for p in output.predictions],
        )
        stage.done("encode")
        return HandledBatch(events, records, write, outputs, produced_at, stage, rejected)

    def _dead_letter(
        self,
        rejection: Rejection,
        position: SourcePosition,
        key: bytes | None,
        value: bytes | None,
        counts: dict[str, int],
    ) -> OutputRecord:
        counts[rejection.code] = counts.get(rejection.code, 0) + 1
        letter = DeadLetter.of(
            f"{rejection.code}: {rejection.reason}", value, topic=position.topic,
            partition=position.partition, offset=position.offset, key=key, source="stream",
            at=self.clock(), code=rejection.code,
            max_bytes=self.settings.stream.dead_letter_max_bytes,
        )  # fmt: skip
        short_key = key if key is None or len(key) <= 1024 else key[:1024]  # fits any broker
        return OutputRecord(
            self.topics[3], short_key, orjson.dumps(letter.model_dump()), position, True
        )
