"""Forecast combination with persistence: publish ``last + w (model - last)``, w fitted online.

Near a random walk (a daily close) the best forecast is the last value, and whatever a network
learns beyond it is mostly noise; on a series with structure (taxi demand) the network is far
better. Rather than pick per series, each key fits, per forecast step ``k`` and channel, the
shrinkage weight that minimises the squared error of the combination over its recent past: the
least-squares slope of the realised change on the predicted change,

    slope_k = E[(y - p)(f - p)] / E[(f - p)^2]

(``f`` the network's forecast, ``p`` the last value when it was made, ``y`` the value that
came), and publishes with ``w_k = clip(slope_k - CONFIDENCE * se_k, 0, 1)``, ``se_k`` the
slope's weighted-least-squares standard error: the network gets the weight it has shown it
earns, and a key where its predicted change carries no information gets persistence (a noise
slope of 0 ± se would otherwise leak half of its positive draws into the forecast). Sums are
exponentially weighted (half-life :data:`HALF_LIFE` events), so the weight follows a series
that becomes more or less predictable. Before :data:`MIN_UPDATES` errors at a step, ``w = 1``
(the network's forecast, itself persistence while untrained). Everything is in normalised units
(those the forecasts are made in). The conformal intervals and the detector's residual are
computed on the published (combined) forecast, so they stay calibrated to what is published.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vigil.models.state_codec import persistent

__all__ = ["CONFIDENCE", "HALF_LIFE", "MIN_UPDATES", "PersistenceCombination"]

HALF_LIFE = 200.0  # events
CONFIDENCE = 2.0  # standard errors the slope is discounted by
MIN_UPDATES = 20
_EMPTY: list[list[float]] = [[], []]  # a slot without a forecast (warming, gap step)


@persistent
class PersistenceCombination:
    """One key's per-step, per-channel combination weights and its last ``horizon`` forecasts."""

    __state__ = ("_cross", "_power", "_power2", "_realised", "_mass", "_updates", "_made")

    def __init__(
        self,
        horizon: int,
        channels: int,
        half_life: float = HALF_LIFE,
        confidence: float = CONFIDENCE,
    ) -> None:
        if horizon < 1 or channels < 1 or not half_life > 0 or not confidence >= 0:
            raise ValueError(f"bad combination {horizon=} {channels=} {half_life=} {confidence=}")
        self.horizon = horizon
        self.channels = channels
        self.half_life = half_life
        self.confidence = confidence
        self._decay = 0.5 ** (1.0 / half_life)
        shape = (horizon, channels)
        self._cross = np.zeros(shape)  # EW sum of (y - p)(f - p)
        self._power = np.zeros(shape)  # EW sum of (f - p)^2
        self._power2 = np.zeros(shape)  # the same with squared weights (for the standard error)
        self._realised = np.zeros(shape)  # EW sum of (y - p)^2
        self._mass = np.zeros(shape)  # EW sum of 1
        self._updates = np.zeros(shape, dtype=np.int64)
        # forecasts still waiting for a target, newest first: [predicted change [H][C], last [C]]
        self._made: list[list[list[float]]] = []

    def weights(self) -> np.ndarray:
        """``[H, C]`` weight of the network's forecast (1 - weight of persistence): the weighted
        least-squares slope less ``confidence`` standard errors, within [0, 1]."""
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = self._cross / self._power
            residual = self._realised - 2 * slope * self._cross + slope**2 * self._power
            variance = np.maximum(residual, 0.0) / self._mass
            error = np.sqrt(variance * self._power2) / self._power
            weight = slope - self.confidence * error
        usable = (self._updates >= MIN_UPDATES) & (self._power > 0) & np.isfinite(weight)
        return np.clip(np.where(usable, weight, 1.0), 0.0, 1.0)

    def combine(self, forecast: np.ndarray, last: Sequence[float]) -> np.ndarray:
        """The published forecast ``[H, C]`` from the network's ``forecast`` ``[H, C]`` and the
        key's ``last`` (gap-filled) values; remembers both to learn from what comes. Call after
        :meth:`observe` of the same event."""
        base = np.asarray(last, dtype=np.float64)[None, :]
        change = np.asarray(forecast, dtype=np.float64) - base
        entry = [change.tolist(), base[0].tolist()]
        if self._made and not self._made[0][0]:
            self._made[0] = entry  # this event's slot, opened by observe
        else:
            self._made.insert(0, entry)
            del self._made[self.horizon :]
        return (base + self.weights() * change).astype(np.float32)

    def observe(self, values: Sequence[float], skipped: int = 0) -> None:
        """Every event's normalised ``values`` (NaN = missing), after ``skipped`` missing steps:
        each remembered forecast that covered it updates the weights of its step; then this
        event's slot opens (filled by :meth:`combine`, or left empty while warming)."""
        made = [_EMPTY] * min(skipped, self.horizon) + self._made
        y = np.asarray(values, dtype=np.float64)
        seen = np.isfinite(y)
        for step, (changes, base) in enumerate(made[: self.horizon]):  # made step+1 events ago
            if not changes or not seen.any():
                continue
            change = np.asarray(changes[step], dtype=np.float64)
            realised = np.where(seen, y - np.asarray(base, dtype=np.float64), 0.0)
            decay = np.where(seen, self._decay, 1.0)
            self._cross[step] = decay * self._cross[step] + realised * change * seen
            self._power[step] = decay * self._power[step] + change * change * seen
            self._power2[step] = decay**2 * self._power2[step] + change * change * seen
            self._realised[step] = decay * self._realised[step] + realised * realised * seen
            self._mass[step] = decay * self._mass[step] + seen
            self._updates[step] += seen
        # the oldest has met its last target; this event's slot goes first
        self._made = [_EMPTY, *made[: self.horizon - 1]]

    @property
    def pending(self) -> int:
        return len(self._made)
