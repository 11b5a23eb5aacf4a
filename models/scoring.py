"""Forecast residual → anomaly score in [0, 1], one event at a time.

Two views of the same residual stream are combined:

* the **raw score**: the residual divided by an online, robust estimate of its spread, read as a
  two-sided normal tail (``raw = 1 - p``). It catches single spikes.
* the **anomaly likelihood** (the idea behind NAB's HTM likelihood): the mean of the last
  ``short_window`` raw scores compared with the distribution of those short means over roughly
  the last ``long_window`` events (exponentially weighted mean and variance, so a key's state
  is a few dozen numbers rather than ``long_window`` of them). It catches a sustained run of
  moderately unusual residuals that no single event would flag.

The final score is a Bonferroni combination of the two tail probabilities, so that under
well-behaved residuals ``P(score >= 1 - p) <= p``: a threshold of 0.99 means "at most about one
ordinary event in a hundred", whichever of the two views triggered it.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Self

from vigil.settings import DetectorConfig

__all__ = ["ResidualScorer", "ScoreResult", "reduce_residual"]

_SQRT2 = math.sqrt(2.0)
# E|r| = sigma * sqrt(2 / pi) for a normal residual, so sigma = mean|r| * sqrt(pi / 2).
_MAD_TO_SIGMA = math.sqrt(math.pi / 2.0)
# NAB's lower bound on the variance of averaged scores: keeps a perfectly flat history from
# turning a tiny wobble into a certain anomaly.
_MIN_LIKELIHOOD_VARIANCE = 0.0003
# mean|r| / median|r| for a normal residual: sqrt(2 / pi) / 0.67449.
_MEDIAN_TO_MEAN_ABS = math.sqrt(2.0 / math.pi) / 0.6744897501960817
_LARGEST_KEPT = 1e300
EARLY_EVENTS = 16  # the spread starts as a median of this many |residual|s
NEUTRAL_RAW = 0.5  # the median raw score of ordinary residuals (raw is uniform under the null)


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """One event's scores; ``observed`` is False when the residual was missing (NaN)."""

    raw: float
    likelihood: float
    score: float
    observed: bool = True


def reduce_residual(
    residual: Iterable[float], how: Literal["rms", "l2", "max_abs"] = "rms"
) -> float:
    """One float from a multivariate residual (channels in normalised units, so comparable).

    ``rms`` keeps the scale of one channel whatever the channel count (the default), ``l2`` is
    the Euclidean norm, ``max_abs`` flags the single worst channel. NaN channels are missing and
    skipped; all missing → NaN (which the scorer treats as "no evidence").
    """
    values = [abs(float(v)) for v in residual]
    present = [v for v in values if not math.isnan(v)]
    if not present:
        return math.nan
    if how == "max_abs":
        return max(present)
    if any(math.isinf(v) for v in present):
        return math.inf
    # Scale before squaring so huge but finite residuals do not overflow to inf.
    top = max(present)
    if top == 0.0:
        return 0.0
    total = math.fsum((v / top) ** 2 for v in present)
    if how == "l2":
        return top * math.sqrt(total)
    if how == "rms":
        return top * math.sqrt(total / len(present))
    raise ValueError(f"how must be 'rms', 'l2' or 'max_abs', got {how!r}")


def _upper_tail(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / _SQRT2)


class ResidualScorer:
    """Streaming residual scorer: ``score_one`` scores the residual, then learns from it.

    The spread is an exponentially weighted mean of ``|residual|`` (weight
    ``2 / (spread_window + 1)``; the first ``EARLY_EVENTS`` use a median instead), updated
    *after* scoring and with each update winsorised at ``clip`` sigmas, so the anomaly being
    scored neither hides itself nor inflates the spread for the events that follow.
    """

    def __init__(
        self,
        short_window: int = 10,
        long_window: int = 500,
        spread_window: int = 100,
        clip: float = 4.0,
        min_spread: float = 1e-6,
    ) -> None:
        if short_window < 1:
            raise ValueError("short_window must be at least 1")
        if long_window <= short_window:
            raise ValueError("long_window must be above short_window")
        if spread_window < 1:
            raise ValueError("spread_window must be at least 1")
        if clip <= 1.0:
            raise ValueError("clip must be above 1 (sigmas)")
        if min_spread <= 0.0:
            raise ValueError("min_spread must be positive")
        self.short_window = short_window
        self.long_window = long_window
        self.spread_window = spread_window
        self.clip = clip
        self.min_spread = min_spread
        self._alpha = 2.0 / (spread_window + 1.0)
        # Long-window stats need some history of short means before they mean anything.
        self._long_alpha = 2.0 / (long_window + 1.0)
        self._min_long = min(long_window, 5 * short_window)
        self.n = 0  # finite residuals learned
        self.mean_abs = 0.0  # EWMA of |residual|
        self._early: list[float] = []
        self._short: deque[float] = deque(maxlen=short_window)
        # Exponentially weighted mean/variance of short-window means over ~long_window events:
        # the "long window" as three numbers, not long_window floats per key in Redis.
        self._long_count = 0
        self._long_mean = 0.0
        self._long_var = 0.0

    @classmethod
    def from_config(cls, detector: DetectorConfig, **overrides: Any) -> Self:
        return cls(
            short_window=detector.short_window, long_window=detector.long_window, **overrides
        )

    # ---- scoring ------------------------------------------------------------------------
    @property
    def sigma(self) -> float:
        """Current robust estimate of the residual standard deviation."""
        return max(self.mean_abs * _MAD_TO_SIGMA, self.min_spread)

    def _raw_tail(self, magnitude: float) -> float:
        """Two-sided normal tail probability of the scaled residual (1.0 before any data)."""
        if self.n == 0:
            return 1.0 - NEUTRAL_RAW
        z = magnitude / self.sigma  # inf for inf or overflow: erfc(inf) = 0
        return math.erfc(z / _SQRT2)

    def _likelihood(self, short_mean: float) -> float:
        """Upper-tail position of a short-window mean within the long window's short means."""
        if self._long_count < self._min_long:
            return 0.5
        variance = max(self._long_var, _MIN_LIKELIHOOD_VARIANCE)
        return 1.0 - _upper_tail((short_mean - self._long_mean) / math.sqrt(variance))

    @staticmethod
    def _combine(raw: float, likelihood: float) -> float:
        """Bonferroni: 1 - 2 * min(p_raw, p_likelihood), floored at 0."""
        p = min(1.0 - raw, 1.0 - likelihood)
        return min(1.0, max(0.0, 1.0 - 2.0 * p))

    def peek(self) -> ScoreResult:
        """The neutral result for a missing residual, from the current state (no update)."""
        if self._short:
            likelihood = self._likelihood(math.fsum(self._short) / len(self._short))
        else:
            likelihood = 0.5
        return ScoreResult(
            raw=NEUTRAL_RAW,
            likelihood=likelihood,
            score=self._combine(NEUTRAL_RAW, likelihood),
            observed=False,
        )

    def score_one(self, residual: float) -> ScoreResult:
        """Score ``residual`` (observed - forecast), then learn from it. NaN learns nothing."""
        residual = float(residual)
        if math.isnan(residual):
            return self.peek()
        magnitude = abs(residual)
        raw = 1.0 - self._raw_tail(magnitude)
        self._short.append(raw)
        short_mean = math.fsum(self._short) / len(self._short)
        likelihood = self._likelihood(short_mean)
        result = ScoreResult(raw=raw, likelihood=likelihood, score=self._combine(raw, likelihood))
        self._learn(magnitude, short_mean)
        return result

    # ---- learning -----------------------------------------------------------------------
    def _learn(self, magnitude: float, short_mean: float) -> None:
        self.n += 1
        if self.n <= EARLY_EVENTS:
            # Too little history to winsorise against: a median cannot be dragged by one spike.
            self._early.append(min(magnitude, _LARGEST_KEPT))  # state stays strict JSON
            estimate = statistics.median(self._early) * _MEDIAN_TO_MEAN_ABS
            if math.isfinite(estimate):
                self.mean_abs = estimate
            if self.n == EARLY_EVENTS:
                self._early.clear()
        else:
            magnitude = min(magnitude, self.clip * self.sigma)
            weight = max(self._alpha, 1.0 / self.n)  # continues the running mean, then EWMA
            self.mean_abs += weight * (magnitude - self.mean_abs)
        self._push_long(short_mean)

    def _push_long(self, value: float) -> None:
        self._long_count += 1
        weight = max(self._long_alpha, 1.0 / self._long_count)  # plain mean/var at first
        diff = value - self._long_mean
        step = weight * diff
        self._long_mean += step
        self._long_var = (1.0 - weight) * (self._long_var + diff * step)

    # ---- state --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "short_window": self.short_window,
            "long_window": self.long_window,
            "spread_window": self.spread_window,
            "clip": self.clip,
            "min_spread": self.min_spread,
            "n": self.n,
            "mean_abs": self.mean_abs,
            "early": list(self._early),
            "short": list(self._short),
            "long_count": self._long_count,
            "long_mean": self._long_mean,
            "long_var": self._long_var,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        scorer = cls(
            short_window=int(d["short_window"]),
            long_window=int(d["long_window"]),
            spread_window=int(d["spread_window"]),
            clip=float(d["clip"]),
            min_spread=float(d["min_spread"]),
        )
        scorer.n = int(d["n"])
        scorer.mean_abs = float(d["mean_abs"])
        scorer._early = [float(v) for v in d["early"]]
        scorer._short.extend(float(v) for v in d["short"])
        scorer._long_count = int(d["long_count"])
        scorer._long_mean = float(d["long_mean"])
        scorer._long_var = float(d["long_var"])
        return scorer
