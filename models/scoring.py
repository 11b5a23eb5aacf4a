"""Forecast residual → anomaly score in [0, 1], one event at a time.

Three stages, each a tail probability ``p`` kept as ``log p`` so that nothing underflows:

* the **raw test**: the residual divided by an online, robust estimate of its spread, read as a
  two-sided normal tail ``p_raw``. Its surprisal ``-log p_raw``, capped at ``surprisal_cap``
  and scaled into [0, 1], is the evidence one event brings.
* the **anomaly likelihood** (the idea behind NAB's HTM anomaly likelihood): an exponentially
  weighted mean of that evidence over about ``short_window`` events, compared with the
  distribution of such means over about the last ``long_window`` events (exponentially
  weighted mean and variance: a key's state is a handful of numbers). ``p_lik`` is its upper
  tail. The residuals of real forecasts are far from normal (heavy tails, flat stretches,
  quantised values), so ``p_raw`` alone is badly calibrated; the likelihood learns what is usual
  *for this key* and stays meaningful. One large spike (surprisal at the cap) still moves the
  mean by several of its standard deviations; a run of moderately unusual residuals that no single
  event would flag adds up.
* the **repeat filter** (as in NAB's HTM likelihood, which demotes consecutive "red" values to
  "yellow"): an event at or above the alert threshold right after another one is reported in the
  hold band between ``clear_threshold`` and ``threshold``. An incident opened by the first stays
  open (the incident detector only compares an open incident's scores with ``clear_threshold``)
  and the score of the second event does not read as a new alert.

``ScoreResult.score`` is the filtered likelihood; ``raw`` and ``likelihood`` (unfiltered) are
kept for inspection. Probabilities map to scores by :func:`tail_to_score`: ``1 - p`` down to
``p = 1e-6`` (so a threshold of 0.99 still means "an ordinary event gets there at most about one
time in a hundred"), then compressed doubly logarithmically, so two different pieces of evidence
never share a score and only infinite evidence reaches exactly 1.0. (A plain ``1 - p`` rounds every
``p < 1.1e-16`` to 1.0: thousands of ordinary events after flat stretches then tied the real
anomalies at the top, and no threshold could tell them apart.)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from vigil.models.state_codec import persistent

__all__ = [
    "ResidualScorer",
    "ScoreResult",
    "log_two_sided_tail",
    "log_upper_tail",
    "reduce_residual",
    "tail_to_score",
]

_SQRT2 = math.sqrt(2.0)
_LOG2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# E|r| = sigma * sqrt(2 / pi) for a normal residual, so sigma = mean|r| * sqrt(pi / 2).
_MAD_TO_SIGMA = math.sqrt(math.pi / 2.0)
# NAB's lower bound on the variance of averaged scores: keeps a perfectly flat history from
# turning a tiny wobble into a certain anomaly.
_MIN_LIKELIHOOD_VARIANCE = 0.0003
# mean|r| / median|r| for a normal residual: sqrt(2 / pi) / 0.67449.
_MEDIAN_TO_MEAN_ABS = math.sqrt(2.0 / math.pi) / 0.6744897501960817
_LARGEST_KEPT = 1e300  # |residual|s are learned clipped here: the spread stays finite
_ASYMPTOTIC_FROM = 30.0  # erfc is exact to here; the asymptotic series beyond (rel. error < 1e-12)
FINE_TAIL = 1e-6  # scores are exactly 1 - p down to this tail probability
_LOG_FINE = math.log(FINE_TAIL)
EARLY_EVENTS = 16  # the spread starts as a median of this many |residual|s
NEUTRAL_RAW = 0.5  # the median raw score of ordinary residuals (raw is uniform under the null)
NORMALISED_MIN_SPREAD = 0.1  # the stream's spread floor, in series standard deviations


def log_upper_tail(z: float) -> float:
    """``log P(Z > z)`` for a standard normal, finite for every finite ``z`` (no underflow)."""
    if math.isnan(z):
        return math.nan
    if z < 0.0:
        return math.log1p(-0.5 * math.erfc(-z / _SQRT2))
    if z < _ASYMPTOTIC_FROM:
        return math.log(0.5 * math.erfc(z / _SQRT2))
    if math.isinf(z):
        return -math.inf
    inverse = 1.0 / (z * z)
    series = 1.0 - inverse * (1.0 - 3.0 * inverse * (1.0 - 5.0 * inverse * (1.0 - 7.0 * inverse)))
    return -0.5 * z * z - math.log(z) - _HALF_LOG_2PI + math.log(series)


def log_two_sided_tail(z: float) -> float:
    """``log P(|Z| > |z|)`` for a standard normal."""
    return min(0.0, _LOG2 + log_upper_tail(abs(z)))


def tail_to_score(log_p: float) -> float:
    """Map ``log p`` to a score in [0, 1], strictly decreasing in ``p``.

    ``1 - p`` for ``p >= FINE_TAIL``; below, ``1 - FINE_TAIL / (1 + log(log p / log FINE_TAIL))``,
    which joins continuously and falls so slowly that float64 keeps every finite ``log p``
    apart (``p = 1e-(10^12)`` still scores 1 - 3.7e-8): only ``p = 0`` scores exactly 1.0.
    The compressed tail is never below ``p``, so ``P(score >= 1 - q) <= q`` still holds.
    """
    if math.isnan(log_p):
        return math.nan
    log_p = min(0.0, log_p)
    if log_p >= _LOG_FINE:
        return 1.0 - math.exp(log_p)
    if math.isinf(log_p):
        return 1.0
    return 1.0 - FINE_TAIL / (1.0 + math.log(log_p / _LOG_FINE))


def _score_to_log_tail(score: float) -> float:
    """Inverse of :func:`tail_to_score` (for thresholds given as scores)."""
    tail = 1.0 - score
    if tail >= FINE_TAIL:
        return math.log(tail)
    return _LOG_FINE * math.exp(FINE_TAIL / tail - 1.0)


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """One event's scores; ``observed`` is False when the residual was missing (NaN).

    ``raw``: the single-event test; ``likelihood``: the anomaly likelihood; ``score``: the
    likelihood after the repeat filter, the value alerts and evaluations use.
    """

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


@persistent
class ResidualScorer:
    """Streaming residual scorer: ``score_one`` scores the residual, then learns from it.

    The spread is an exponentially weighted mean of ``|residual|`` (weight
    ``2 / (spread_window + 1)``; the first ``EARLY_EVENTS`` use a median instead), updated
    *after* scoring and with each update winsorised at ``clip`` sigmas, so the anomaly being
    scored neither hides itself nor inflates the spread for the events that follow. It never
    falls below ``min_spread`` (in the residual's units). The stream's scorer sees residuals in
    normalised units, standard deviations of the series, and uses ``NORMALISED_MIN_SPREAD``: an
    error a tenth of the series' spread is not news however calm the key has been. Without such a
    floor, a flat stretch shrinks the spread towards zero and the first ordinary change afterwards
    looks astronomically unlikely.

    ``threshold`` and ``clear_threshold`` (the incident detector's) place the repeat filter:
    a repeat is reported at the geometric middle of their tails (0.968 for 0.99 and 0.9).
    Any residual is accepted: NaN learns nothing, ``inf`` and huge values score as certain
    anomalies and are learned clipped at 1e300, so the state stays finite.
    """

    __state__ = (
        "n",
        "mean_abs",
        "_early",
        "_short_mean",
        "_long_count",
        "_long_mean",
        "_long_var",
        "_last_red",
    )

    def __init__(
        self,
        short_window: int = 10,
        long_window: int = 500,
        spread_window: int = 100,
        clip: float = 4.0,
        min_spread: float = 1e-6,
        surprisal_cap: float = 30.0,
        threshold: float = 0.99,
        clear_threshold: float = 0.9,
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
        if not surprisal_cap > 0.0:
            raise ValueError("surprisal_cap must be positive")
        if not 0.0 < clear_threshold < threshold < 1.0:
            raise ValueError("need 0 < clear_threshold < threshold < 1")
        self.short_window = short_window
        self.long_window = long_window
        self.spread_window = spread_window
        self.clip = clip
        self.min_spread = min_spread
        self.surprisal_cap = surprisal_cap
        self.threshold = threshold
        self.clear_threshold = clear_threshold
        self._alpha = 2.0 / (spread_window + 1.0)
        self._short_alpha = 2.0 / (short_window + 1.0)
        self._long_alpha = 2.0 / (long_window + 1.0)
        # Long-window stats need some history before they mean anything: the spread settles
        # over the first EARLY_EVENTS, then one short window of evidence is averaged.
        self._min_long = min(long_window, EARLY_EVENTS + short_window)
        self._red = _score_to_log_tail(threshold)
        self._hold = 0.5 * (self._red + math.log(1.0 - clear_threshold))  # geometric middle
        self.n = 0  # finite residuals learned
        self.mean_abs = 0.0  # EWMA of |residual|
        self._early: list[float] = []
        self._short_mean: float | None = None  # EWMA of the evidence
        # Exponentially weighted mean/variance of short means over ~long_window events:
        # the "long window" as three numbers, not long_window floats per key in Redis.
        self._long_count = 0
        self._long_mean = 0.0
        self._long_var = 0.0
        self._last_red = False  # the previous scored event reached the threshold

    # ---- scoring ------------------------------------------------------------------------
    @property
    def sigma(self) -> float:
        """Current robust estimate of the residual standard deviation."""
        return max(self.mean_abs * _MAD_TO_SIGMA, self.min_spread)

    def _log_raw_tail(self, magnitude: float) -> float:
        """log of the two-sided normal tail of the scaled residual (log 0.5 before any data)."""
        if self.n == 0:
            return math.log(1.0 - NEUTRAL_RAW)
        return log_two_sided_tail(magnitude / self.sigma)  # inf or overflow: log 0 = -inf

    def _evidence(self, log_raw_tail: float) -> float:
        """The surprisal ``-log p_raw``, capped and scaled into [0, 1]."""
        return min(-log_raw_tail, self.surprisal_cap) / self.surprisal_cap

    def _log_likelihood_tail(self, short_mean: float) -> float:
        """log upper tail of a short mean within the long window's short means."""
        if self._long_count < self._min_long:
            return math.log(0.5)
        variance = max(self._long_var, _MIN_LIKELIHOOD_VARIANCE)
        return log_upper_tail((short_mean - self._long_mean) / math.sqrt(variance))

    def _filtered(self, log_tail: float) -> float:
        """The repeat filter: a second red in a row is reported in the hold band."""
        if self._last_red and log_tail <= self._red:
            return max(log_tail, self._hold)
        return log_tail

    def peek(self) -> ScoreResult:
        """The neutral result for a missing residual, from the current state (no update)."""
        if self._short_mean is None:
            log_lik = math.log(0.5)
        else:
            log_lik = self._log_likelihood_tail(self._short_mean)
        return ScoreResult(
            raw=NEUTRAL_RAW,
            likelihood=tail_to_score(log_lik),
            score=tail_to_score(self._filtered(log_lik)),
            observed=False,
        )

    def score_one(self, residual: float) -> ScoreResult:
        """Score ``residual`` (observed - forecast), then learn from it. NaN learns nothing."""
        residual = float(residual)
        if math.isnan(residual):
            return self.peek()
        magnitude = abs(residual)
        log_raw = self._log_raw_tail(magnitude)
        evidence = self._evidence(log_raw)
        if self._short_mean is None:
            short_mean = evidence
        else:
            short_mean = self._short_mean + self._short_alpha * (evidence - self._short_mean)
        log_lik = self._log_likelihood_tail(short_mean)
        reported = self._filtered(log_lik)
        result = ScoreResult(
            raw=tail_to_score(log_raw),
            likelihood=tail_to_score(log_lik),
            score=tail_to_score(reported),
        )
        self._last_red = log_lik <= self._red
        self._short_mean = short_mean
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
            magnitude = min(magnitude, self.clip * self.sigma, _LARGEST_KEPT)
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
