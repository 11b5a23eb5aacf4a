"""Backpressure: pause the busiest partitions while events wait in the worker too long.

Faust fetches ahead into per-partition buffers. When offered load passes capacity those buffers
fill, and every event waits behind them: latency grows without bound although nothing is lost.
Pausing the partitions that bring most events keeps the excess in Kafka (where it is durable and
visible as consumer lag, which the autoscaler acts on) and keeps in-worker latency near the target.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from faust.types import TP, EventT

from stream.metrics import VigilMetrics

log = logging.getLogger("vigil.backpressure")


class PartitionThrottle:
    def __init__(
        self,
        app: Any,
        max_queue: int,
        metrics: VigilMetrics,
        *,
        latency_target_s: float = 0.1,
        pause_fraction: float = 0.5,
        min_pause_s: float = 0.2,
    ) -> None:
        self.app = app
        self.max_queue = max_queue
        self.metrics = metrics
        self.latency_target_s = latency_target_s
        self.pause_fraction = pause_fraction
        self.min_pause_s = min_pause_s
        self.recent: Counter[TP] = Counter()
        self.paused: set[TP] = set()
        self.paused_at = 0.0
        self.pauses = 0

    def observe(self, events: Sequence[EventT]) -> None:
        """Remember which partitions are busiest (exponentially forgotten)."""
        for tp in list(self.recent):
            self.recent[tp] //= 2
        for event in events:
            self.recent[TP(event.message.topic, event.message.partition)] += 1

    def waited(self, events: Sequence[EventT]) -> float:
        """Longest time an event of the batch spent in the worker before being handled."""
        now = time.monotonic()
        times = [getattr(e.message, "time_in", None) for e in events]
        return max((now - t for t in times if t), default=0.0)

    async def after_batch(self, events: Sequence[EventT], queue_depth: int) -> None:
        overloaded = queue_depth > self.max_queue or self.waited(events) > self.latency_target_s
        consumer = self.app.consumer
        if overloaded and not self.paused:
            busiest = [tp for tp, n in self.recent.most_common() if n > 0]
            count = max(1, int(len(busiest) * self.pause_fraction))
            self.paused = set(busiest[:count])
            if self.paused:
                consumer.pause_partitions(self.paused)
                self.paused_at = time.monotonic()
                self.pauses += 1
                log.info("backpressure: paused %d partitions", len(self.paused))
        elif (
            self.paused and not overloaded and time.monotonic() - self.paused_at > self.min_pause_s
        ):
            consumer.resume_partitions(self.paused)
            log.info("backpressure: resumed %d partitions", len(self.paused))
            self.paused = set()
        self.metrics.paused_partitions.set(len(self.paused))
