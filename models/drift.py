"""Regime changes in the residual stream, and how hard online training should lean into them.

The monitored signal is the residual magnitude ``|observed - forecast|``: it rises both when the
level moves away from what the model learned (biased residuals) and when the noise grows, and
it falls when the series calms down. Two detectors:

* ``"page_hinkley"`` (default, pure, JSON state): a two-sided Page-Hinkley / CUSUM test on the
  *standardised* signal ``z = (x - mean) / std`` (mean and std of everything since the last
  reset), each ``z`` winsorised at ``clip`` so one spike cannot pass for a drift:
  ``g+ = max(0, g+ + z - delta)``, ``g- = max(0, g- - z - delta)``, drift when either exceeds
  ``threshold``. Scale-free, so one setting serves every key.
* ``"adwin"``: river's ADWIN on the same signal. Its window lives in river's Rust helper, which
  offers ``__getstate__`` bytes; those are stored base64 in the dict (opaque, tied to the river
  version; never unpickled).

After a drift the learning-rate multiplier jumps to ``boost`` and then decays geometrically
(``half_life`` events) towards ``floor`` while nothing else changes: adapt fast to a new
regime, then settle so a stable model is not pushed around by noise.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any, Literal, Self

from river import drift as river_drift

from vigil.settings import DetectorConfig

__all__ = ["DriftSignal", "PageHinkley", "ResidualDriftMonitor"]

Method = Literal["page_hinkley", "adwin"]


@dataclass(frozen=True, slots=True)
class DriftSignal:
    """A detected change: where, which way (``up`` = residuals grew), and by which test."""

    index: int  # 0-based position in the residuals the monitor has seen (finite ones)
    ts: float | None
    direction: Literal["up", "down"]
    method: Method
    statistic: float  # PH: the cumulative sum that crossed; ADWIN: new mean - old mean


class PageHinkley:
    """Two-sided Page-Hinkley test on a standardised signal (pure Python, JSON state)."""

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
        """Add one value; returns the direction of a detected change (and resets) or None."""
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_instances": self.min_instances,
            "delta": self.delta,
            "threshold": self.threshold,
            "clip": self.clip,
            "n": self.n,
            "mean": self.mean,
            "m2": self.m2,
            "g_up": self.g_up,
            "g_down": self.g_down,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        test = cls(
            min_instances=int(d["min_instances"]),
            delta=float(d["delta"]),
            threshold=float(d["threshold"]),
            clip=float(d["clip"]),
        )
        test.n = int(d["n"])
        test.mean = float(d["mean"])
        test.m2 = float(d["m2"])
        test.g_up = float(d["g_up"])
        test.g_down = float(d["g_down"])
        return test


def _adwin_to_dict(adwin: river_drift.ADWIN) -> dict[str, Any]:
    helper = adwin._helper
    return {
        "delta": adwin.delta,
        "clock": adwin.clock,
        "max_buckets": adwin.max_buckets,
        "min_window_length": adwin.min_window_length,
        "grace_period": adwin.grace_period,
        "drift_detected": adwin.drift_detected,
        "window_state": base64.b64encode(helper.__getstate__()).decode("ascii"),
    }


def _adwin_from_dict(d: dict[str, Any]) -> river_drift.ADWIN:
    adwin = river_drift.ADWIN(
        delta=float(d["delta"]),
        clock=int(d["clock"]),
        max_buckets=int(d["max_buckets"]),
        min_window_length=int(d["min_window_length"]),
        grace_period=int(d["grace_period"]),
    )
    adwin._helper.__setstate__(base64.b64decode(d["window_state"]))
    adwin._drift_detected = bool(d["drift_detected"])
    return adwin


class ResidualDriftMonitor:
    """``update(residual)`` → a :class:`DriftSignal` on a regime change; ``lr_scale`` to train by.

    Non-finite residuals are ignored (no index is consumed). The learning-rate multiplier
    starts at ``initial_scale``.
    """

    def __init__(
        self,
        method: Method = "page_hinkley",
        min_instances: int = 30,
        ph_delta: float = 0.5,
        ph_threshold: float = 12.0,
        ph_clip: float = 3.0,
        adwin_delta: float = 0.002,
        boost: float = 5.0,
        floor: float = 0.5,
        half_life: float = 100.0,
        initial_scale: float = 1.0,
    ) -> None:
        if method not in ("page_hinkley", "adwin"):
            raise ValueError(f"method must be 'page_hinkley' or 'adwin', got {method!r}")
        if not 0 < floor <= boost:
            raise ValueError("need 0 < floor <= boost")
        if half_life <= 0:
            raise ValueError("half_life must be positive")
        self.method: Method = method
        self.boost = boost
        self.floor = floor
        self.half_life = half_life
        self._decay = 0.5 ** (1.0 / half_life)
        self.lr_scale = float(initial_scale)
        self.index = 0
        self.drifts = 0
        self.last_drift: int | None = None
        self._page_hinkley = PageHinkley(min_instances, ph_delta, ph_threshold, ph_clip)
        self._adwin = river_drift.ADWIN(delta=adwin_delta, grace_period=min_instances)

    @classmethod
    def from_config(
        cls, detector: DetectorConfig, method: Method = "page_hinkley", **overrides: Any
    ) -> Self:
        """The detector's warm-up doubles as the test's warm-up: no drift before alerts start."""
        overrides.setdefault("min_instances", max(2, detector.warmup_events))
        return cls(method=method, **overrides)

    def update(self, residual: float, ts: float | None = None) -> DriftSignal | None:
        residual = float(residual)
        if not math.isfinite(residual):
            return None
        x = abs(residual)
        index = self.index
        self.index += 1
        self.lr_scale = self.floor + (self.lr_scale - self.floor) * self._decay
        signal = self._test(x, index, ts)
        if signal is not None:
            self.drifts += 1
            self.last_drift = index
            self.lr_scale = self.boost
        return signal

    def _test(self, x: float, index: int, ts: float | None) -> DriftSignal | None:
        if self.method == "page_hinkley":
            test = self._page_hinkley
            direction = test.update(x)
            if direction is None:
                return None
            statistic = test.statistic
            test.reset()
            return DriftSignal(index, ts, direction, "page_hinkley", statistic)
        adwin = self._adwin
        before = adwin.estimation
        adwin.update(x)
        if not adwin.drift_detected:
            return None
        change = adwin.estimation - before
        return DriftSignal(index, ts, "up" if change > 0 else "down", "adwin", change)

    # ---- state --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        detector_state = (
            self._page_hinkley.to_dict()
            if self.method == "page_hinkley"
            else _adwin_to_dict(self._adwin)
        )
        return {
            "method": self.method,
            "boost": self.boost,
            "floor": self.floor,
            "half_life": self.half_life,
            "lr_scale": self.lr_scale,
            "index": self.index,
            "drifts": self.drifts,
            "last_drift": self.last_drift,
            "detector": detector_state,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        monitor = cls(
            method=d["method"],
            boost=float(d["boost"]),
            floor=float(d["floor"]),
            half_life=float(d["half_life"]),
            initial_scale=float(d["lr_scale"]),
        )
        monitor.index = int(d["index"])
        monitor.drifts = int(d["drifts"])
        monitor.last_drift = None if d["last_drift"] is None else int(d["last_drift"])
        if monitor.method == "page_hinkley":
            monitor._page_hinkley = PageHinkley.from_dict(d["detector"])
        else:
            monitor._adwin = _adwin_from_dict(d["detector"])
        return monitor
