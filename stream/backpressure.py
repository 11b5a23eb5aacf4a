"""Backpressure: bounded buffers in front of inference, the busiest partitions paused when full.

Faust fetches ahead into a buffer per input topic. Vigil bounds that buffer at
``VIGIL_BATCH__MAX_QUEUE`` events (Faust's ``stream_buffer_maxsize``): when it is under
pressure, Faust stops fetching the partitions whose records keep arriving — the busiest — while
keeping every record already fetched, and resumes each partition once the buffer has drained to
half. The excess waits in Kafka (durable, visible as consumer lag, which the autoscaler acts on)
instead of in worker memory, so in-worker latency stays bounded as load passes capacity.

Why not ``consumer.pause_partitions`` from the agent: in faust-streaming 0.15 records already
fetched for a partition that is paused that way are skipped, and the offsets after them are
still committed — events would be lost. Faust's own buffer flow control has no such gap.

:class:`~vigil.stream.intake.IntakeSensor` counts how often a buffer fills (Faust's sensor hook).

A buffer sized in events bounds the wait only to ``size / rate``, which at a few hundred events
per second is seconds. :class:`InWorkerLimit` bounds it by time instead: it measures how many
events per second the worker handles and, once more events are inside the worker than it can
finish within ``VIGIL_BATCH__LATENCY_TARGET_MS``, the stream stops letting fetched records in
(its fetch loop waits; nothing is skipped) until half of them are done.
"""

from __future__ import annotations


class InWorkerLimit:
    """How many events may be inside the worker: what it finishes within the latency target.

    An event that arrives behind ``n`` others waits about ``n / rate``, so with at most
    ``target x rate`` inside, the wait in the worker stays near the target however much load
    is offered; the rest waits in Kafka. ``rate`` is smoothed over batches (events handled per
    second of handling); ``floor`` keeps batches large enough to batch inference at all.
    """

    def __init__(
        self, target_s: float, *, floor: int, ceiling: int, smoothing: float = 0.2
    ) -> None:
        if target_s <= 0 or not 1 <= floor <= ceiling or not 0 < smoothing <= 1:
            raise ValueError("target_s > 0, 1 <= floor <= ceiling and 0 < smoothing <= 1 needed")
        self.target_s = target_s
        self.floor = floor
        self.ceiling = ceiling
        self.smoothing = smoothing
        self.rate: float | None = None  # events handled per second

    def record(self, events: int, seconds: float) -> None:
        """Fold in one handled batch."""
        if events <= 0 or seconds <= 0:
            return
        rate = events / seconds
        self.rate = rate if self.rate is None else self.rate + self.smoothing * (rate - self.rate)

    @property
    def limit(self) -> int:
        """Events allowed inside; the ceiling until a batch has been measured."""
        if self.rate is None:
            return self.ceiling
        return max(self.floor, min(self.ceiling, int(self.target_s * self.rate)))

    def full(self, inside: int) -> bool:
        return inside >= self.limit

    def drained(self, inside: int) -> bool:
        return inside <= self.limit // 2
