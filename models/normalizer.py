"""Per-key, per-channel running normalisation so one network serves series of any scale.

Welford's update keeps a numerically stable running mean and (population) variance per channel
without storing history. With ``max_count`` set, the weight of a new value stops shrinking at
``1/max_count``: the statistics become exponentially weighted and follow a series whose level
moves (a stock price), instead of freezing on its distant past.

The standard deviation is floored at ``max(absolute_floor, relative_floor * |mean|)`` so a flat
series (variance 0) does not turn the next small wiggle into an enormous input, and normalised
values are clipped to ±``clip`` so one wild reading cannot saturate the network. Missing values
(None or non-finite) are skipped per channel and stay None through :meth:`normalize`.

Values are folded in clipped to ±``max_abs`` (1e150): the squared deviation in the variance update
then stays far below float64's 1.8e308, so one ``1e308`` reading cannot turn the variance into
``inf`` (and every later forecast into NaN). Normalising such a reading still gives ±``clip``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from vigil.models.state_codec import persistent


@persistent
@dataclass
class RunningNormalizer:
    """Running mean/variance per channel of one key; ``update`` then ``normalize``."""

    __state__: ClassVar[tuple[str, ...]] = ("count", "mean", "var")

    channels: int
    absolute_floor: float = 1e-4
    relative_floor: float = 1e-3
    clip: float = 20.0
    max_count: int | None = None
    max_abs: float = 1e150
    count: list[int] = field(init=False)
    mean: list[float] = field(init=False)
    var: list[float] = field(init=False)

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if self.absolute_floor <= 0 or self.relative_floor < 0 or self.clip <= 0:
            raise ValueError("absolute_floor and clip must be > 0, relative_floor >= 0")
        if self.max_count is not None and self.max_count < 1:
            raise ValueError(f"max_count must be >= 1 or None, got {self.max_count}")
        if not 0 < self.max_abs <= 1e150:
            raise ValueError(f"max_abs must be in (0, 1e150], got {self.max_abs}")
        self.count = [0] * self.channels
        self.mean = [0.0] * self.channels
        self.var = [0.0] * self.channels

    def update(self, vector: Sequence[float | None]) -> None:
        """Fold one observation into the statistics; missing channels are left alone."""
        self._check(vector)
        for ch, value in enumerate(vector):
            if value is None or not math.isfinite(value):
                continue
            value = min(self.max_abs, max(-self.max_abs, value))
            n = self.count[ch] + 1
            self.count[ch] = n
            weight = 1.0 / (n if self.max_count is None else min(n, self.max_count))
            delta = value - self.mean[ch]
            self.mean[ch] += weight * delta
            # var_n = (1 - w) * (var_{n-1} + w * delta²): Welford's update written per step.
            self.var[ch] = (1.0 - weight) * (self.var[ch] + weight * delta * delta)

    def std(self) -> np.ndarray:
        """Floored standard deviation per channel, float64 ``[F]``."""
        mean = np.asarray(self.mean, dtype=np.float64)
        raw = np.sqrt(np.asarray(self.var, dtype=np.float64))
        floor = np.maximum(self.absolute_floor, self.relative_floor * np.abs(mean))
        return np.maximum(raw, floor)

    def normalize(self, vector: Sequence[float | None]) -> list[float | None]:
        """Raw values → normalised, clipped values; missing stays None (never NaN)."""
        self._check(vector)
        std = self.std()
        out: list[float | None] = []
        for ch, value in enumerate(vector):
            if value is None or not math.isfinite(value):
                out.append(None)
                continue
            z = (value - self.mean[ch]) / std[ch]
            out.append(float(min(self.clip, max(-self.clip, z))))
        return out

    def normalize_array(self, values: np.ndarray) -> np.ndarray:
        """Raw ``[..., F]`` → normalised, clipped float32 for complete data (NaN stays NaN)."""
        mean = np.asarray(self.mean, dtype=np.float64)
        z = (np.asarray(values, dtype=np.float64) - mean) / self.std()
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def denormalize(self, values: np.ndarray) -> np.ndarray:
        """Normalised ``[..., F]`` (e.g. a forecast ``[H, F]``) → raw units, float64."""
        array = np.asarray(values, dtype=np.float64)
        if array.shape[-1] != self.channels:
            raise ValueError(f"last axis must have {self.channels} channels, got {array.shape}")
        return array * self.std() + np.asarray(self.mean, dtype=np.float64)

    def _check(self, vector: Sequence[float | None]) -> None:
        if len(vector) != self.channels:
            raise ValueError(f"expected {self.channels} values, got {len(vector)}")
