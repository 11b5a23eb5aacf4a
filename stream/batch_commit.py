"""The batch protocol, in one place: what makes a batch's effects safe, in the order that does.

1. **produce** the batch's outputs (predictions, alerts, drift, dead letters) and **await
   Kafka's acknowledgements**;
2. **write** the states and latest predictions to Redis in one transaction;
3. **feed training** with the batch's admitted examples;
4. **ack** the events: only now may Faust commit their offsets.

A crash anywhere before 4 leaves the offsets uncommitted: Kafka redelivers the events, each
key's saved state says which of them it already absorbed, and the rest are processed again
(outputs at least once, state exactly once). Alerts reach webhooks through the alerts topic
alone (:mod:`vigil.alerting`), so an alert acknowledged in step 1 is delivered even if the
worker dies before step 2.

Faults are told apart: Kafka or Redis being away is waited out (:class:`FaultTolerance`), with
nothing acked meanwhile; a record the broker refuses for good (too large, invalid) costs that
record alone: its source event is dead-lettered with the reason, and a dead letter the broker
refuses is sent again without the copy of the original bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from vigil.outage import FaultTolerance, fault_service
from vigil.records import DeadLetter
from vigil.stream.batch_handler import HandledBatch, OutputRecord
from vigil.stream.metrics import VigilMetrics
from vigil.stream.state_store import StateStore

log = logging.getLogger("vigil.commit")

# the records' deliveries, one awaitable each; ``separately``: one record per Kafka batch
Send = Callable[[Sequence[OutputRecord], bool], Awaitable[list[Awaitable[Any]]]]
Ack = Callable[[Sequence[Any]], None]


class BatchCommit:
    def __init__(
        self,
        send: Send,
        store: StateStore,
        faults: FaultTolerance,
        metrics: VigilMetrics,
        ack: Ack,
        *,
        dead_letter_topic: str,
    ) -> None:
        self.send = send
        self.store = store
        self.faults = faults
        self.metrics = metrics
        self.ack = ack
        self.dead_letter_topic = dead_letter_topic

    async def commit(self, batch: HandledBatch) -> None:
        batch.stage.resume()  # time spent waiting for the agent is no stage's
        await self.deliver(batch.records)  # 1. outputs acknowledged by Kafka
        batch.stage.done("deliver")
        delivered = time.time()
        await self.faults.retry(lambda: self.store.write(batch.write))  # 2. state saved
        for runtime, output in batch.outputs:  # 3. training fed
            runtime.learn(output)
        batch.stage.done("save_state")
        self.ack(batch.events)  # 4. offsets may be committed
        self._count(batch, delivered)

    async def deliver(self, records: Sequence[OutputRecord]) -> None:
        """Every record acknowledged, or (refused for good) replaced by a dead letter.

        Records go in Kafka batches; a batch the broker refuses is sent again one record per
        batch, so only the record it refuses alone is replaced."""
        pending = list(records)
        delay: float | None = None
        while pending:
            results = await self._send_all(pending, False)
            retry: list[OutputRecord] = []
            suspects: list[OutputRecord] = []
            outage: BaseException | None = None
            for record, result in zip(pending, results, strict=True):
                if not isinstance(result, BaseException):
                    continue
                if fault_service(result) is not None:
                    retry.append(record)
                    outage = result
                    continue
                suspects.append(record)
            if suspects:  # refused in a batch: find the one record the broker will not take
                results = await self._send_all(suspects, True)
                for record, result in zip(suspects, results, strict=True):
                    if isinstance(result, BaseException):
                        if fault_service(result) is not None:
                            retry.append(record)
                            outage = result
                        else:
                            replacement = self._refused(record, result)
                            if replacement is not None:
                                retry.append(replacement)
            if outage is not None:
                delay = await self.faults.back_off("kafka", outage, delay)
            elif self.faults.watches["kafka"].down:
                self.faults.succeeded("kafka")
            pending = retry

    async def _send_all(self, records: Sequence[OutputRecord], separately: bool) -> list[Any]:
        try:
            deliveries = await self.send(records, separately)
        except Exception as exc:  # e.g. no metadata: the broker is away
            return [exc] * len(records)
        return await asyncio.gather(*deliveries, return_exceptions=True)

    def _refused(self, record: OutputRecord, exc: BaseException) -> OutputRecord | None:
        """What to send instead of a record the broker will never take."""
        self.metrics.output_failures.labels(record.topic).inc()
        reason = f"{type(exc).__name__}: {exc}"[:500]
        if record.dead_letter:
            letter = orjson.loads(record.value)
            if not letter.get("original"):
                log.error("dead letter for %s refused even without its original (%s); it is"
                          " only in the source topic", record.source, reason)  # fmt: skip
                return None
            letter.update(original="", original_truncated=True,
                          reason=f"{letter['reason']} (dead letter refused with its original:"
                                 f" {reason})")  # fmt: skip
            return OutputRecord(record.topic, record.key, orjson.dumps(letter), record.source, True)
        log.error("output to %s for %s refused (%s); dead-lettering its source event",
                  record.topic, record.source, reason)  # fmt: skip
        letter_record = DeadLetter.of(
            f"output_rejected: {record.topic} refused the output ({reason})", b"",
            topic=record.source.topic, partition=record.source.partition,
            offset=record.source.offset, key=record.key, source="stream", at=time.time(),
            code="output_rejected", max_bytes=0,
        )  # fmt: skip
        self.metrics.dead_letters.labels("output_rejected").inc()
        return OutputRecord(
            self.dead_letter_topic, record.key, orjson.dumps(letter_record.model_dump()),
            record.source, True,
        )  # fmt: skip

    def _count(self, batch: HandledBatch, delivered: float) -> None:
        m = self.metrics
        m.state_writes.inc(len(batch.write.states))
        for code, count in batch.rejected.items():
            m.dead_letters.labels(code).inc(count)
        for produced in batch.produced_at:
            m.latency.observe(max(0.0, delivered - produced))
        for runtime, output in batch.outputs:
            group = runtime.group.name
            for outcome, count in output.outcomes.items():
                m.events.labels(group, outcome).inc(count)
            for alert in output.alerts:
                m.alerts.labels(group, alert.severity).inc()
            if output.drift:
                m.drift_events.labels(group).inc(len(output.drift))
