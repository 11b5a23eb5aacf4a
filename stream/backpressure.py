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

:class:`BufferPressure` only watches: it exports how many partitions are paused and how often.
"""

from __future__ import annotations

from typing import Any

from faust.types import TP

from stream.metrics import VigilMetrics


class BufferPressure:
    def __init__(self, app: Any, metrics: VigilMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self.paused: set[TP] = set()
        self.pauses = 0

    def tick(self) -> set[TP]:
        """Read which partitions Faust holds back because their buffer is full."""
        consumer = self.app.consumer
        now = set(getattr(consumer, "_buffered_partitions", set()))
        newly = now - self.paused
        if newly:
            self.pauses += len(newly)
            self.metrics.partition_pauses.inc(len(newly))
        self.paused = now
        self.metrics.paused_partitions.set(len(now))
        return now
