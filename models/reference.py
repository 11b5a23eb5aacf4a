"""Reference mode: score a key against a known-normal period, jointly across its channels.

The residual likelihood (:mod:`models.scoring`) judges each event against the key's *recent*
past, and the forecaster keeps fine-tuning: a sustained fault (a valve stuck for ten minutes, a
pump running hot for an hour) becomes the new normal within seconds and scores near 0.5 again.
An operator often knows better: "the first N readings of a key are normal operation". A
:class:`ReferenceProfile` learns what normal looks like from exactly that period, then **freezes**
and scores every later event against it, so a fault stays flagged for as long as it lasts and
clears when the key returns to normal.

Per channel, four features describe the last ``window`` events (a sliding window, so a fault's
effect leaves the features exactly ``window`` events after it ends): the **level** (mean), the
**spread** (standard deviation) and the **error of a linear autoregression** of order ``order``
fitted on the reference (root mean square and median of its absolute one-step errors: the median
ignores the few large errors at a square wave's edges, which would hide a change of noise or shape
from the root mean square). A mean shift or a stuck value moves the level or the spread; a change
of frequency, shape or noise moves the autoregression's error, even when every value stays in its
usual range.

While learning, the raw values are kept (at most ``events`` rows: bounded memory). At the freeze:

1. the autoregression of each channel is fitted (least squares, with an intercept) on each half
   of the reference, and each half is replayed through the *other* half's fit to get its
   features (cross-fitting: the calibration then sees out-of-sample errors, as scoring will);
2. each feature gets a robust centre and scale (median, 1.4826 · MAD; a small floor), and the
   second moments of the standardised features are shrunk towards the identity (``shrinkage``),
   so a near-singular covariance (channels that move together, a constant channel) still has a
   bounded inverse;
3. an event's **Hotelling T²** is ``zᵀ Σ⁻¹ z`` of its standardised features ``z``, smoothed
   exponentially over about ``smooth`` events (1 by default: the sliding window already makes a
   collective fault stand out, and more smoothing only lengthened the tail after a fault);
4. the calibration is the mean and standard deviation of ``log`` smoothed T² over the reference,
   out of sample too (each half's T² under the centre, scale and precision of the other half;
   calibrated in sample, the stream flagged 16-17% of normal GutenTAG rows instead of 7-9%): the
   features are strongly autocorrelated, so the textbook chi-square law of T² would be far too
   confident. The score is the upper normal tail of the standardised ``log`` smoothed T², mapped
   to [0, 1] by :func:`~models.scoring.tail_to_score` (0.99: about 2.33 reference standard
   deviations above the reference's usual level).

While learning, the profile reports 0.0 (the period is normal by definition). A missing value
(NaN) is replaced by the autoregression's forecast, with no error (the last value while
learning); an event with no value at all reports the current score. After the
freeze the state is a few small arrays (``O(channels · (order + window) + features²)``); scoring
then uses the autoregression fitted on the whole reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from vigil.models.scoring import log_upper_tail, tail_to_score
from vigil.models.state_codec import persistent

__all__ = ["MAD_TO_SIGMA", "ReferenceProfile", "min_reference_events"]

MAD_TO_SIGMA = 1.4826  # sigma / MAD for a normal sample
FEATURES_PER_CHANNEL = 4  # level, spread, autoregression error (RMS and median)
_LARGEST = 1e100  # values are clipped here: every square and product stays finite
_Z_CLIP = 1e6  # standardised features are clipped here: T² stays finite
_MIN_LOG_SPREAD = 0.05  # floor of the calibration's spread (log units): a flat reference
_SCALE_FLOOR = 1e-9  # absolute floor of a feature's scale, relative to 1 + |centre|


def min_reference_events(order: int, window: int, smooth: int) -> int:
    """The shortest reference that leaves each half enough rows to fit and to calibrate on."""
    return 2 * (2 * (order + 1) + window + smooth)


@persistent
@dataclass
class ReferenceProfile:
    """Learns the first ``events`` events of a key as normal, then scores departures from them.

    ``score_one(values)`` takes one reading (one float per channel, NaN = missing) and returns a
    score in [0, 1]: 0.0 while learning, then the tail score of the smoothed T² (module doc).
    """

    __state__: ClassVar[tuple[str, ...]] = (
        "seen",
        "rows",
        "history",
        "coef",
        "recent",
        "errors",
        "center",
        "scale",
        "precision",
        "log_mean",
        "log_spread",
        "smoothed",
        "frozen",
    )

    channels: int
    events: int = 1000
    window: int = 20
    order: int = 24
    smooth: int = 1
    shrinkage: float = 0.1
    seen: int = field(default=0, init=False)  # events learned (the reference so far)
    rows: list[list[float]] = field(default_factory=list, init=False)  # raw rows, until freeze
    history: list[list[float]] = field(default_factory=list, init=False)  # last `order` rows
    coef: np.ndarray = field(init=False)  # [channels, order + 1]: lags (newest first), intercept
    recent: list[list[float]] = field(default_factory=list, init=False)  # last `window` rows
    errors: list[list[float]] = field(default_factory=list, init=False)  # their |AR errors|
    center: np.ndarray = field(init=False)
    scale: np.ndarray = field(init=False)
    precision: np.ndarray = field(init=False)
    log_mean: float = field(default=0.0, init=False)  # calibration: log smoothed T² (reference)
    log_spread: float = field(default=1.0, init=False)
    smoothed: float | None = field(default=None, init=False)  # EW mean of T²
    frozen: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"channels must be at least 1, got {self.channels}")
        if self.order < 1 or self.window < 1 or self.smooth < 1:
            raise ValueError("order, window and smooth must be at least 1")
        if self.events < min_reference_events(self.order, self.window, self.smooth):
            raise ValueError(
                f"events ({self.events}) must be at least 2 * (2 * (order + 1) + window + smooth)"
            )
        if not 0.0 < self.shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in (0, 1], got {self.shrinkage}")
        c, d = self.channels, self.features
        self.coef = np.zeros((c, self.order + 1))
        self.center = np.zeros(d)
        self.scale = np.ones(d)
        self.precision = np.eye(d)

    @property
    def features(self) -> int:
        return FEATURES_PER_CHANNEL * self.channels

    @property
    def ready(self) -> bool:
        """The reference period is over: scores mean something."""
        return self.frozen

    def score_one(self, values: Sequence[float]) -> float:
        """Score one reading in [0, 1] (see the class doc); learn it while in the reference."""
        if len(values) != self.channels:
            raise ValueError(f"expected {self.channels} values, got {len(values)}")
        present = [
            max(-_LARGEST, min(_LARGEST, float(v))) if math.isfinite(v) else None for v in values
        ]
        if not self.frozen:
            last = self.history[-1] if self.history else [0.0] * self.channels
            filled = [lv if v is None else v for v, lv in zip(present, last, strict=True)]
            self.rows.append(filled)
            self.history = [*self.history, filled][-self.order :]
            self.seen += 1
            if self.seen >= self.events:
                self._freeze()
            return 0.0
        if all(v is None for v in present):
            return self._score()  # nothing observed: the evidence so far stands
        z = self._standardise(self._step(present))
        t2 = max(float(z @ self.precision @ z), 0.0)
        alpha = 2.0 / (self.smooth + 1.0)
        self.smoothed = (
            t2 if self.smoothed is None else self.smoothed + alpha * (t2 - self.smoothed)
        )
        return self._score()

    # ---- internals ---------------------------------------------------------------------------
    def _step(self, present: Sequence[float | None]) -> np.ndarray:
        """Update the sliding window with one row; the feature vector after it."""
        lags = np.asarray(self.history[::-1], dtype=np.float64).T  # [channels, order], newest first
        with np.errstate(over="ignore", invalid="ignore"):
            forecast = np.einsum("co,co->c", self.coef[:, :-1], lags) + self.coef[:, -1]
        forecast = np.clip(np.nan_to_num(forecast, nan=0.0), -_LARGEST, _LARGEST)
        # a missing value is the autoregression's forecast, with no error
        row = [float(forecast[c]) if v is None else v for c, v in enumerate(present)]
        error = [abs(v - float(f)) for v, f in zip(row, forecast.tolist(), strict=True)]
        self.history = [*self.history, row][-self.order :]
        self.recent = [*self.recent, row][-self.window :]
        self.errors = [*self.errors, error][-self.window :]
        values = np.asarray(self.recent)
        with np.errstate(over="ignore", invalid="ignore"):
            spread = np.nan_to_num(np.std(values, axis=0), nan=0.0, posinf=_LARGEST)
        level = np.mean(values / 2, axis=0) * 2  # halves: no overflow near _LARGEST
        errors = np.asarray(self.errors)
        rms = np.sqrt(np.mean(np.square(errors / 2), axis=0)) * 2
        return np.concatenate([level, spread, rms, np.median(errors, axis=0)])

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        return _standardised(features, self.center, self.scale)

    def _score(self) -> float:
        if self.smoothed is None:
            return 0.0
        level = (math.log(max(self.smoothed, 1e-300)) - self.log_mean) / self.log_spread
        return tail_to_score(log_upper_tail(level))

    def _freeze(self) -> None:
        """End of the reference: fit, replay, calibrate; keep no rows."""
        self.frozen = True
        data = np.asarray(self.rows, dtype=np.float64).reshape(-1, self.channels)
        self.rows = []
        # Cross-fitting: each half of the reference is replayed through the autoregression fitted
        # on the other half, so the calibration sees out-of-sample errors, as scoring will.
        half = len(data) // 2
        first, second = data[:half], data[half:]
        warm_first = self._replay(first, _autoregression(second, self.order))
        warm_second = self._replay(second, _autoregression(first, self.order))
        # the calibration is out of sample too: each half's T² under the other half's profile
        logs = [
            *self._log_t2(warm_second, self._fit_profile(warm_first)),
            *self._log_t2(warm_first, self._fit_profile(warm_second)),
        ]
        self.log_mean = float(np.mean(logs))
        self.log_spread = max(float(np.std(logs)), _MIN_LOG_SPREAD)
        self.center, self.scale, self.precision = self._fit_profile(
            np.concatenate([warm_first, warm_second])
        )
        # score from here on with the autoregression of the whole reference, its windows filled
        # by the reference's end
        self.coef = _autoregression(data, self.order)
        tail = data[-(self.order + self.window) :]
        self.history = tail[: self.order].tolist()
        self.recent, self.errors = [], []
        for row in tail[self.order :].tolist():
            self._step(row)
        self.smoothed = math.exp(self.log_mean)  # the reference's typical level

    def _fit_profile(self, warm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centre, scale and (shrunk) precision of the features ``warm`` [rows, features]."""
        center = np.median(warm, axis=0)
        with np.errstate(over="ignore", invalid="ignore"):
            mad = np.median(np.abs(warm - center), axis=0) * MAD_TO_SIGMA
        mad = np.nan_to_num(mad, nan=0.0, posinf=1e300)
        scale = np.maximum(mad, _SCALE_FLOOR * (1.0 + np.abs(center)))
        z = _standardised(warm, center, scale)
        moments = np.nan_to_num((z.T @ z) / len(z), nan=0.0, posinf=_Z_CLIP**2)
        shrunk = (1.0 - self.shrinkage) * moments + self.shrinkage * np.eye(self.features)
        try:
            precision = np.linalg.inv(shrunk)
        except np.linalg.LinAlgError:
            precision = np.eye(self.features) / self.shrinkage
        return center, scale, np.nan_to_num(0.5 * (precision + precision.T))

    def _log_t2(
        self, warm: np.ndarray, profile: tuple[np.ndarray, np.ndarray, np.ndarray]
    ) -> list[float]:
        """``log`` of the smoothed T² of the features ``warm`` under ``profile``."""
        center, scale, precision = profile
        z = _standardised(warm, center, scale)
        alpha = 2.0 / (self.smooth + 1.0)
        logs = []
        smoothed: float | None = None
        for k, row in enumerate(z):
            t2 = max(float(row @ precision @ row), 0.0)
            smoothed = t2 if smoothed is None else smoothed + alpha * (t2 - smoothed)
            if k >= self.smooth:
                logs.append(math.log(max(smoothed, 1e-300)))
        return logs

    def _replay(self, data: np.ndarray, coef: np.ndarray) -> np.ndarray:
        """The features of ``data`` through ``coef`` from a cold start, once the window is full."""
        self.coef = coef
        self.history = data[: self.order].tolist()
        self.recent, self.errors = [], []
        feats = [self._step(row) for row in data[self.order :].tolist()]
        return np.stack(feats[self.window - 1 :])


def _standardised(features: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(features - center) / scale``, clipped to ±``_Z_CLIP`` (NaN: 0)."""
    with np.errstate(over="ignore", invalid="ignore"):
        z = (features - center) / scale
    return np.clip(np.nan_to_num(z, nan=0.0), -_Z_CLIP, _Z_CLIP)


def _autoregression(data: np.ndarray, order: int) -> np.ndarray:
    """Least-squares autoregression per channel: ``[channels, order + 1]`` (lags newest first,
    then the intercept); zeros where the fit fails."""
    n, channels = data.shape
    coef = np.zeros((channels, order + 1))
    for c in range(channels):
        x = data[:, c]
        lags = np.stack([x[order - k - 1 : n - k - 1] for k in range(order)], axis=1)
        design = np.hstack([lags, np.ones((n - order, 1))])
        with np.errstate(all="ignore"):
            try:
                fitted = np.linalg.lstsq(design, x[order:], rcond=None)[0]
            except np.linalg.LinAlgError:
                continue
        coef[c] = np.clip(np.nan_to_num(fitted, nan=0.0), -_LARGEST, _LARGEST)
    return coef
