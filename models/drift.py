"""Regime changes in the residual stream, and how hard online training should lean into them.

The monitored signal is the residual magnitude ``|observed - forecast|``: it rises both when the
level moves away from what the model learned (biased residuals) and when the noise grows, and
it falls when the series calms down. The test is a two-sided Page-Hinkley / CUSUM test on the
*standardised* signal ``z = (x - mean) / std`` (mean and std of everything since the last
reset), each ``z`` winsorised at ``clip`` so one spike cannot pass for a drift:
``g+ = max(0, g+ + z - delta)``, ``g- = max(0, g- - z - delta)``, drift when either exceeds
``threshold``. Scale-free, so one setting serves every key. The signal is capped at 1e100 before
it enters the running moments, so the sum of squares stays finite whatever the residual.

(River's ADWIN was offered too; its window can only be saved through its Rust helper's private
state, so it was dropped rather than persisted through river internals.)

After a drift the learning-rate multiplier jumps to ``boost`` and then decays geometrically
(``half_life`` events) towards ``floor`` while nothing else changes: adapt fast to a new
regime, then settle so a stable model is not pushed around by noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from vigil.models.state_codec import persistent

__all__ = ["DriftSignal", "PageHinkley", "ResidualDriftMonitor"]

Method = Literal["page_hinkley"]
_LARGEST_SIGNAL = 1e100  # squares and their running sum stay far inside float64


@dataclass(frozen=True, slots=True)
class DriftSignal:
    """A detected change: where, which way (``up`` = residuals grew), and by which test."""

    index: int  # 0-based position in the residuals the monitor has seen (finite ones)
    ts: float | None
    direction: Literal["up", "down"]
    method: Method
    statistic: float  # the cumulative sum that crossed the threshold


@persistent
class PageHinkley:
    """Two-sided Page-Hinkley test on a standardised signal (pure Python, JSON state)."""

    __state__ = ("n", "mean", "m2", "g_up", "g_down")

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.5,
        threshold: float = 12.0,
        clip: float = 3.0,
    ) -> None:
        if min_instances < 2:
            raise ValueError("min_instances must be at least 2")
        if delta < 0 or threshold <= 0 or clip <= 0:
            raise ValueError("delta must be >= 0, threshold and clip > 0")
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.clip = clip
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0  # Welford sum of squared deviations
        self.g_up = 0.0
        self.g_down = 0.0

    def update(self, x: float) -> Literal["up", "down"] | None:
        """Add one value; returns the direction of a detected change or None (NaN: skipped)."""
        if math.isnan(x):
            return None
        x = min(_LARGEST_SIGNAL, max(-_LARGEST_SIGNAL, x))
        change: Literal["up", "down"] | None = None
        if self.n >= self.min_instances:
            std = math.sqrt(self.m2 / (self.n - 1))
            spread = std if std > 0 else 1e-12
            z = min(self.clip, max(-self.clip, (x - self.mean) / spread))
            self.g_up = max(0.0, self.g_up + z - self.delta)
            self.g_down = max(0.0, self.g_down - z - self.delta)
            if self.g_up > self.threshold:
                change = "up"
            elif self.g_down > self.threshold:
                change = "down"
        self.n += 1
        diff = x - self.mean
        self.mean += diff / self.n
        self.m2 += diff * (x - self.mean)
        return change

    @property
    def statistic(self) -> float:
        return max(self.g_up, self.g_down)


@persistent
class ResidualDriftMonitor:
    """``update(residual)`` → a :class:`DriftSignal` on a regime change; ``lr_scale`` to train by.

    Non-finite residuals are ignored (no index is consumed). The learning-rate multiplier
    starts at ``initial_scale``. The stream sets ``min_instances`` to the detector's warm-up, so
    no drift is reported before alerts start.
    """

    __state__ = ("lr_scale", "index", "drifts", "last_drift", "_page_hinkley")

    def __init__(
        self,
        min_instances: int = 30,
        ph_delta: float = 0.5,
        ph_threshold: float = 12.0,
        ph_clip: float = 3.0,
        boost: float = 5.0,
        floor: float = 0.5,
        half_life: float = 100.0,
        initial_scale: float = 1.0,
    ) -> None:
        if not 0 < floor <= boost:
            raise ValueError("need 0 < floor <= boost")
        if half_life <= 0:
            raise ValueError("half_life must be positive")
        self.min_instances = min_instances
        self.ph_delta = ph_delta
        self.ph_threshold = ph_threshold
        self.ph_clip = ph_clip
        self.boost = boost
        self.floor = floor
        self.half_life = half_life
        self.initial_scale = initial_scale
        self._decay = 0.5 ** (1.0 / half_life)
        self.lr_scale = float(initial_scale)
        self.index = 0
        self.drifts = 0
        self.last_drift: int | None = None
        self._page_hinkley = PageHinkley(min_instances, ph_delta, ph_threshold, ph_clip)

    def update(self, residual: float, ts: float | None = None) -> DriftSignal | None:
        residual = float(residual)
        if not math.isfinite(residual):
            return None
        index = self.index
        self.index += 1
        self.lr_scale = self.floor + (self.lr_scale - self.floor) * self._decay
        test = self._page_hinkley
        direction = test.update(abs(residual))
        if direction is None:
            return None
        signal = DriftSignal(index, ts, direction, "page_hinkley", test.statistic)
        test.reset()
        self.drifts += 1
        self.last_drift = index
        self.lr_scale = self.boost
        return signal
