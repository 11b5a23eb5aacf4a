"""NAB's "windowed Gaussian" baseline detector, reimplemented to check our pipeline end to end.

Running it through ``vigil eval nab`` and comparing with NAB's published windowedGaussian
figures shows that the runner, the results files and the scorer fit together.  Behaviour kept
from NAB (so that the comparison means something):

* the score of a value is ``1 - Q(|z|)``, ``Q`` the Gaussian upper tail and ``z`` the value's
  distance from the mean of a window of earlier values in their standard deviations, computed
  BEFORE the value is learned (so it runs from 0.5 at the mean to 1 far away);
* ``Q(z) = erfc(z / sqrt(2)) / 2`` (NAB's published scores match this to 1e-12; nupic's
  rounded ``1.4142`` does not);
* a zero standard deviation becomes 1e-6; the first value scores 0.
"""

from __future__ import annotations

import math
from typing import Any, Self

import numpy as np

__all__ = ["WindowedGaussian", "gaussian_tail"]

_SQRT2 = math.sqrt(2.0)


def gaussian_tail(value: float, mean: float, std: float) -> float:
    """``P(|X - mean| > |value - mean|) / 2`` for ``X ~ N(mean, std)`` ."""
    z = abs(value - mean) / std
    return 0.5 * math.erfc(z / _SQRT2)


class WindowedGaussian:
    """Online detector: ``score_one`` scores against the window, then learns the value.

    The window holds up to ``window`` values; once full it slides forward ``step`` values at a
    time (new values wait in a buffer meanwhile, and the mean and deviation stay as they were).
    The defaults, 6400 and 100, are what NAB's published windowedGaussian results were computed
    with: those files match this class to their 12 printed digits (NAB's current source says
    1000 and 1, which does not reproduce them).
    """

    def __init__(self, window: int = 6400, step: int = 100) -> None:
        if window < 1 or step < 1:
            raise ValueError("window and step must be at least 1")
        self.window = window
        self.step = step
        self.values: list[float] = []
        self.pending: list[float] = []
        self.mean = 0.0
        self.std = 1.0

    def _refresh(self) -> None:
        data = np.asarray(self.values, dtype=np.float64)
        self.mean = float(data.mean())
        self.std = float(data.std()) or 1e-6

    def _learn(self, value: float) -> None:
        if len(self.values) < self.window:
            self.values.append(value)
            self._refresh()
            return
        self.pending.append(value)
        if len(self.pending) == self.step:
            self.values = self.values[self.step :] + self.pending
            self.pending = []
            self._refresh()

    def score_one(self, value: float) -> float:
        value = float(value)
        if not math.isfinite(value):
            return 0.0  # a missing reading is no evidence of anything
        score = 1.0 - gaussian_tail(value, self.mean, self.std) if self.values else 0.0
        self._learn(value)
        return score

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "step": self.step,
            "values": list(self.values),
            "pending": list(self.pending),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        detector = cls(int(d["window"]), int(d["step"]))
        detector.values = [float(v) for v in d["values"]]
        detector.pending = [float(v) for v in d["pending"]]
        if detector.values:
            detector._refresh()
        return detector
