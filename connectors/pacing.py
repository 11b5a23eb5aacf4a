"""Pacing of recorded series: send at the pace the timestamps say, faster, or at full speed."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Pacer:
    """Turns record time into wall time: speed 1 = the original pace, N = N times faster,
    0 = no waiting. Anchored to the first record, so waits do not accumulate drift."""

    def __init__(self, speed: float, clock: Callable[[], float] = time.monotonic) -> None:
        if speed < 0 or not math.isfinite(speed):
            raise ValueError(f"speed must be 0 (as fast as possible) or positive, got {speed}")
        self.speed = speed
        self.clock = clock
        self._origin: tuple[float, float] | None = None

    def delay(self, ts: float) -> float:
        """Seconds to wait before sending a record stamped ``ts``."""
        if self.speed == 0 or not math.isfinite(ts):
            return 0.0
        if self._origin is None:
            self._origin = (ts, self.clock())
            return 0.0
        origin_ts, origin_wall = self._origin
        return max(0.0, origin_wall + (ts - origin_ts) / self.speed - self.clock())
