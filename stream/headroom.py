"""How much of the event loop's thread is spent working, and what that says about capacity.

The event loop thread runs all of the worker's per-event Python work (Faust, the Kafka client,
Vigil's batch path). Its busy share — CPU seconds of that thread per wall second — is the
worker's utilisation: the rate it handles divided by that share is the rate it could sustain
at full utilisation (``vigil_sustainable_events_per_second``, what operators and autoscalers size
from). The same share sets the online trainer's CPU budget: the busier the loop, the less the
trainer may compute, so inference keeps up at any load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

FULL_SHARE_BELOW = 0.5  # loop busy share up to which the trainer gets its whole configured share
MIN_SHARE_FRACTION = 0.1  # at a saturated loop, the trainer keeps this fraction of its share


@dataclass(frozen=True)
class Headroom:
    busy: float  # the loop thread's CPU seconds per wall second, smoothed, in [0, 1]
    handled_per_s: float  # events committed per second, smoothed
    sustainable_per_s: float | None  # handled / busy: the rate at a fully busy loop

    def training_share(self, ceiling: float) -> float:
        """The trainer's CPU share: ``ceiling`` while the loop has room, less as it fills."""
        if self.busy <= FULL_SHARE_BELOW:
            return ceiling
        spare = (1.0 - self.busy) / (1.0 - FULL_SHARE_BELOW)
        return ceiling * max(MIN_SHARE_FRACTION, spare)


class LoopHeadroom:
    """Call :meth:`sample` from the event loop's thread, about once a second."""

    def __init__(
        self,
        *,
        smoothing: float = 0.3,
        cpu_clock: Callable[[], float] = time.thread_time,
        wall_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.smoothing = smoothing
        self.cpu_clock = cpu_clock
        self.wall_clock = wall_clock
        self._cpu = cpu_clock()
        self._wall = wall_clock()
        self._events = 0
        self.busy = 0.0
        self.handled_per_s = 0.0

    def sample(self, events_total: int) -> Headroom:
        cpu, wall = self.cpu_clock(), self.wall_clock()
        elapsed = wall - self._wall
        if elapsed > 0:
            busy = min(1.0, max(0.0, (cpu - self._cpu) / elapsed))
            rate = max(0, events_total - self._events) / elapsed
            a = self.smoothing
            self.busy += a * (busy - self.busy)
            self.handled_per_s += a * (rate - self.handled_per_s)
        self._cpu, self._wall, self._events = cpu, wall, events_total
        sustainable = self.handled_per_s / self.busy if self.busy > 0.02 else None
        return Headroom(self.busy, self.handled_per_s, sustainable)
