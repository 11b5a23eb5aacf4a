"""Backpressure: pause the busiest partitions while events wait in the worker too long.

Faust fetches ahead into per-partition buffers. When offered load passes capacity those buffers
fill, and every event waits behind them: latency grows without bound although nothing is lost.
Pausing the partitions that bring most events keeps the excess in Kafka (durable, and visible as
consumer lag, which the autoscaler acts on) and keeps in-worker latency near the target.

Pausing is decided after each batch; resuming is decided by :meth:`PartitionThrottle.tick` on a
timer, because a paused partition brings no batch that could resume it.
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
        max_wait_s: float = 0.1,
        pause_fraction: float = 0.5,
        min_pause_s: float = 0.1,
        clock: Any = time.monotonic,
    ) -> None:
        self.app = app
        self.max_queue = max_queue
        self.metrics = metrics
        self.max_wait_s = max_wait_s
        self.pause_fraction = pause_fraction
        self.min_pause_s = min_pause_s
        self.clock = clock
        self.recent: Counter[TP] = Counter()
        self.paused: set[TP] = set()
        self.paused_at = 0.0
        self.pauses = 0
        self.last_wait = 0.0
        self.last_depth = 0

    def observe(self, events: Sequence[EventT]) -> None:
        """Remember which partitions are busiest (exponentially forgotten)."""
        for tp in list(self.recent):
            self.recent[tp] //= 2
        for event in events:
            self.recent[TP(event.message.topic, event.message.partition)] += 1

    def waited(self, events: Sequence[EventT]) -> float:
        """Longest time an event of the batch spent in the worker before being handled."""
        now = self.clock()
        times = [getattr(e.message, "time_in", None) for e in events]
        return max((now - t for t in times if t), default=0.0)

    def overloaded(self) -> bool:
        return self.last_depth > self.max_queue or self.last_wait > self.max_wait_s

    async def after_batch(self, events: Sequence[EventT], queue_depth: int) -> None:
        self.last_wait = self.waited(events)
        self.last_depth = queue_depth
        if self.overloaded() and not self.paused:
            busiest = [tp for tp, n in self.recent.most_common() if n > 0]
            self.paused = set(busiest[: max(1, int(len(busiest) * self.pause_fraction))])
            if self.paused:
                self.app.consumer.pause_partitions(self.paused)
                self.paused_at = self.clock()
                self.pauses += 1
                self.metrics.backpressure_pauses.inc()
                log.debug("backpressure: paused %s", sorted(self.paused))
        self.metrics.paused_partitions.set(len(self.paused))

    def tick(self, queue_depth: int) -> None:
        """Resume once the pause has let the backlog drain (called on a short timer)."""
        if not self.paused or self.clock() - self.paused_at < self.min_pause_s:
            return
        self.last_depth = queue_depth
        since_pause = self.clock() - self.paused_at
        if queue_depth <= self.max_queue // 2 and (self.last_wait <= self.max_wait_s or since_pause > 1.0):
            self.app.consumer.resume_partitions(self.paused)
            log.debug("backpressure: resumed %s", sorted(self.paused))
            self.paused = set()
            self.last_wait = 0.0
            self.metrics.paused_partitions.set(0)
