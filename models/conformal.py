"""Prediction intervals that keep their coverage when the series changes under them.

Adaptive conformal inference (Gibbs & Candès, 2021), per horizon step ``h``: the interval is
``forecast ± q_h``, where ``q_h`` is the ``ceil((n + 1)(1 - alpha_t))``-th smallest of the last
``window`` absolute residuals of that step, and after each outcome

    alpha_t <- alpha_t + gamma * (alpha - err_t),   err_t = 1 if the value fell outside.

Misses shrink ``alpha_t`` (wider intervals) and hits grow it, so the long-run miss rate tracks
``alpha`` even when the residual distribution shifts (a plain split-conformal quantile over a
window would under-cover until the window refreshes).

Huge values cannot poison the state: a nonconformity score beyond float64's range (a forecast of
-1e308 meeting a value of 1e308) is kept as the largest finite double, and interval bounds are
clamped to the finite range, so a finite forecast always gets a finite interval.
"""

from __future__ import annotations

import bisect
import math
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from vigil.models.state_codec import persistent

__all__ = ["AdaptiveConformal"]

# Keeps alpha_t finite after a long one-sided run; far outside the range where it matters
# (alpha_t <= 0 already means "widest interval", alpha_t >= 1 "no width").
_ALPHA_T_BOUNDS = (-1.0, 2.0)
_LARGEST = sys.float_info.max


def _finite(value: float) -> float:
    """``value`` clamped to the finite doubles (NaN stays NaN)."""
    if math.isinf(value):
        return math.copysign(_LARGEST, value)
    return value


@persistent
@dataclass
class _Issued:
    """An interval handed out by ``issue``: kept so ``observe`` scores exactly what was shown."""

    __state__: ClassVar[tuple[str, ...]] = ()

    forecast: list[float]
    lower: list[float]
    upper: list[float]
    age: int = 0


@persistent
@dataclass
class _StepState:
    """Nonconformity scores (arrival order, and sorted) and alpha_t of one horizon step.

    Everything is a constructor field except ``ordered``, rebuilt from ``scores``: stored once.
    """

    __state__: ClassVar[tuple[str, ...]] = ()

    window: int
    alpha_t: float
    scores: deque[float] = field(default_factory=deque)
    seen: int = 0
    covered: int = 0
    ordered: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.scores = deque(self.scores, maxlen=self.window)
        self.ordered = sorted(self.scores)

    def add(self, score: float) -> None:
        if len(self.scores) == self.window:
            oldest = self.scores[0]
            del self.ordered[bisect.bisect_left(self.ordered, oldest)]
        self.scores.append(score)
        bisect.insort(self.ordered, score)

    def quantile(self) -> float:
        """The conformal quantile at level 1 - alpha_t (capped at the largest score kept)."""
        n = len(self.ordered)
        if n == 0:
            return 0.0
        rank = math.ceil((n + 1) * (1.0 - self.alpha_t) - 1e-9)
        if rank <= 0:
            return 0.0
        return self.ordered[min(rank, n) - 1]


@persistent
class AdaptiveConformal:
    """Online conformal intervals for an ``horizon``-step forecast, nominal level ``1 - alpha``.

    Two ways to feed it:

    * ``issue(forecast)`` each event, then ``observe(value)`` when the next value arrives: the
      object remembers what it issued and scores each step against the exact interval shown
      (the step-``h`` forecast issued ``h`` events ago meets today's value). Simplest for a
      stream.
    * ``interval(forecast)`` (pure) and ``learn_one(forecast, observed)`` with the caller
      aligning forecasts with outcomes; a miss is judged against the current interval.

    Before any outcome is learned the intervals have zero width.
    """

    __state__ = ("_steps", "_issued")

    def __init__(
        self, horizon: int = 1, alpha: float = 0.1, gamma: float = 0.005, window: int = 100
    ) -> None:
        if horizon < 1:
            raise ValueError("horizon must be at least 1")
        if not 0.0 < alpha < 1.0:
            raise ValueError("alpha must be in (0, 1)")
        if not 0.0 < gamma < 1.0:
            raise ValueError("gamma must be in (0, 1)")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.horizon = horizon
        self.alpha = alpha
        self.gamma = gamma
        self.window = window
        self._steps = [_StepState(window, alpha) for _ in range(horizon)]
        self._issued: deque[_Issued] = deque()

    # ---- queries ------------------------------------------------------------------------
    @property
    def alpha_t(self) -> list[float]:
        """The current working miss rate of each step."""
        return [step.alpha_t for step in self._steps]

    @property
    def coverage(self) -> list[float]:
        """Empirical coverage of each step since the start (NaN before any outcome)."""
        return [s.covered / s.seen if s.seen else math.nan for s in self._steps]

    def half_width(self, step: int) -> float:
        return self._steps[step].quantile()

    def interval(self, forecast: Sequence[float]) -> list[tuple[float, float]]:
        """``(lower, upper)`` for each of the ``horizon`` forecast steps; changes no state."""
        if len(forecast) < self.horizon:
            raise ValueError(f"need {self.horizon} forecast steps, got {len(forecast)}")
        widths = [step.quantile() for step in self._steps]
        return [(_finite(f - w), _finite(f + w)) for f, w in zip(forecast, widths, strict=False)]

    # ---- learning -----------------------------------------------------------------------
    def learn_step(
        self,
        step: int,
        forecast: float,
        observed: float,
        bounds: tuple[float, float] | None = None,
    ) -> bool | None:
        """Learn one outcome of step ``step`` (0 = one ahead); returns whether it was covered.

        ``bounds`` is the interval that was shown; without it the current one is used.
        Non-finite forecasts or outcomes are skipped (returns None).
        """
        if not (math.isfinite(forecast) and math.isfinite(observed)):
            return None
        state = self._steps[step]
        score = _finite(abs(observed - forecast))
        if bounds is None:
            width = state.quantile()
            bounds = (forecast - width, forecast + width)
        covered = bounds[0] <= observed <= bounds[1]
        state.alpha_t += self.gamma * (self.alpha - (0.0 if covered else 1.0))
        state.alpha_t = min(_ALPHA_T_BOUNDS[1], max(_ALPHA_T_BOUNDS[0], state.alpha_t))
        state.seen += 1
        state.covered += int(covered)
        state.add(score)
        return covered

    def learn_one(self, forecast: Sequence[float], observed: Sequence[float | None]) -> None:
        """``observed[h]`` is the value ``forecast[h]`` predicted; None = not known (skipped)."""
        if len(forecast) < self.horizon or len(observed) < self.horizon:
            raise ValueError(f"need {self.horizon} forecast and observed steps")
        for step in range(self.horizon):
            value = observed[step]
            if value is not None:
                self.learn_step(step, float(forecast[step]), float(value))

    def issue(self, forecast: Sequence[float]) -> list[tuple[float, float]]:
        """The intervals for ``forecast``, remembered for the next ``observe`` calls."""
        bounds = self.interval(forecast)
        self._issued.append(
            _Issued(
                forecast=[float(f) for f in forecast[: self.horizon]],
                lower=[lo for lo, _ in bounds],
                upper=[hi for _, hi in bounds],
            )
        )
        while len(self._issued) > self.horizon:  # issue without observe: forget the oldest
            self._issued.popleft()
        return bounds

    def observe(self, observed: float | None) -> None:
        """The value that followed the last ``issue``; None (missing) just ages the forecasts."""
        for issued in self._issued:
            issued.age += 1
            step = issued.age - 1
            if observed is not None and step < self.horizon:
                self.learn_step(
                    step,
                    issued.forecast[step],
                    float(observed),
                    (issued.lower[step], issued.upper[step]),
                )
        while self._issued and self._issued[0].age >= self.horizon:
            self._issued.popleft()
