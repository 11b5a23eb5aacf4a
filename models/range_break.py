"""Range break: a value beyond everything the key has ever shown.

The forecast-residual likelihood (:mod:`models.scoring`) averages evidence over a window, so it
is slow to react to a single spike and learns a new level as it settles; and it is relative to
the model's recent errors, so a badly forecast series hides spikes in its own noise. A value
that leaves the key's whole history of values by a clear margin is news whatever the model
thought. NAB's HTM detector pairs its likelihood with exactly this check ("spatial anomaly":
5% of the range beyond the lowest or highest value seen scores 1.0); so does this part:

* the key's range ``[low, high]`` is every value seen so far (it only grows);
* a value more than ``tolerance * (high - low)`` below ``low`` or above ``high`` scores 1.0,
  any other 0.0; then the value widens the range.

It stays 0.0 during the key's first ``warmup`` events (the range is still being discovered:
early on almost every value is a new extreme) and while the range is a single point (no scale
to measure a margin with). Missing values (NaN, inf) score 0.0 and teach nothing. The state is
three numbers per key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from vigil.models.state_codec import persistent

__all__ = ["RangeBreak"]


@persistent
@dataclass
class RangeBreak:
    """Per-key range-break detector (see the module doc)."""

    __state__: ClassVar[tuple[str, ...]] = ("low", "high", "events")

    tolerance: float = 0.05
    warmup: int = 64
    low: float | None = field(default=None, init=False)
    high: float | None = field(default=None, init=False)
    events: int = field(default=0, init=False)  # finite values learned

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0.0):
            raise ValueError(f"tolerance must be a finite number >= 0, got {self.tolerance}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")

    def breaks(self, value: float) -> bool:
        """Is ``value`` beyond the range by more than the margin? (No learning.)"""
        low, high = self.low, self.high
        if low is None or high is None or high <= low or self.events < self.warmup:
            return False
        # halves: a range of finite doubles never overflows this way
        margin = self.tolerance * (high / 2 - low / 2)
        return value / 2 > high / 2 + margin or value / 2 < low / 2 - margin

    def score_one(self, value: float) -> float:
        """1.0 for a range break, else 0.0; then learn the value."""
        if not math.isfinite(value):
            return 0.0
        score = 1.0 if self.breaks(value) else 0.0
        self.events += 1
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)
        return score
