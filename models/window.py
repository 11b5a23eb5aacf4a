"""A key's most recent NORMALISED vectors, with a documented rule for missing values.

Real feeds drop values: a sensor misses a reading, one channel of a multi-channel record is null.
NaN must never reach the network (one NaN poisons every output of the batch it rides in), so
:class:`WindowBuffer` fills each gap according to its :class:`GapPolicy`:

* ``carry_forward`` (default) — repeat the channel's last observed value. Never invents a trend
  and has no look-ahead, so the newest row is final when it is pushed.
* ``interpolate`` — like ``carry_forward`` at the newest row (nothing later is known yet); once
  the channel is observed again, the rows of the closed gap that are still in the window are
  rewritten on the straight line between the two observations.
* ``mask`` — zero-fill (0 is the running mean in normalised units, the least surprising value)
  and count: :attr:`WindowBuffer.missing_count` tells how many cells of the window were never
  observed, so a detector can hold alerts on a window that is mostly filler.

Under every policy :meth:`WindowBuffer.observed_mask` says which cells were real, a channel never
observed yet reads 0, and a window not yet full is front-padded with 0. Values beyond float32's
range are stored as its largest finite value (float32 would make them ``inf``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum

import numpy as np

from vigil.models.state_codec import persistent


class GapPolicy(StrEnum):
    """How a missing value is filled in the window (see the module docstring)."""

    CARRY_FORWARD = "carry_forward"
    INTERPOLATE = "interpolate"
    MASK = "mask"


_NEVER = -1
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@persistent
class WindowBuffer:
    """Fixed-length ring of the last ``length`` normalised vectors of one key."""

    __state__ = ("_values", "_observed", "_head", "_size", "_last_value", "_since_seen")

    def __init__(
        self, length: int, channels: int, gap_policy: GapPolicy | str = GapPolicy.CARRY_FORWARD
    ) -> None:
        if length < 1 or channels < 1:
            raise ValueError(f"length and channels must be >= 1, got {length=} {channels=}")
        try:
            self.gap_policy = GapPolicy(gap_policy)
        except ValueError:
            choices = ", ".join(p.value for p in GapPolicy)
            raise ValueError(
                f"unknown gap policy {gap_policy!r}; choose one of {choices}"
            ) from None
        self.length = length
        self.channels = channels
        self._values = np.zeros((length, channels), dtype=np.float32)
        self._observed = np.zeros((length, channels), dtype=bool)
        self._head = 0  # where the next row goes
        self._size = 0  # rows filled so far (<= length)
        self._last_value: np.ndarray = np.zeros(channels, dtype=np.float32)
        # rows since each channel was last seen
        self._since_seen: np.ndarray = np.full(channels, _NEVER, dtype=np.int64)

    # ---- writing -------------------------------------------------------------------------
    def push(self, vector: Sequence[float | None]) -> None:
        """Append one vector; None or a non-finite number is a missing value."""
        if len(vector) != self.channels:
            raise ValueError(f"expected {self.channels} values, got {len(vector)}")
        row = np.empty(self.channels, dtype=np.float32)
        seen = np.zeros(self.channels, dtype=bool)
        for ch, value in enumerate(vector):
            if value is not None and math.isfinite(value):
                row[ch] = min(_FLOAT32_MAX, max(-_FLOAT32_MAX, value))
                seen[ch] = True
            elif self.gap_policy is GapPolicy.MASK:
                row[ch] = 0.0
            else:
                row[ch] = self._last_value[ch]
        if self.gap_policy is GapPolicy.INTERPOLATE:
            self._close_gaps(row, seen)
        self._values[self._head] = row
        self._observed[self._head] = seen
        self._head = (self._head + 1) % self.length
        self._size = min(self._size + 1, self.length)
        self._last_value = np.where(seen, row, self._last_value)
        self._since_seen = np.where(
            seen, 0, np.where(self._since_seen == _NEVER, _NEVER, self._since_seen + 1)
        )

    def _close_gaps(self, row: np.ndarray, seen: np.ndarray) -> None:
        """Rewrite the filled rows between a channel's previous observation and this one."""
        for ch in np.flatnonzero(seen & (self._since_seen >= 1)):
            steps = int(self._since_seen[ch]) + 1  # from the previous observation to this row
            start, end = float(self._last_value[ch]), float(row[ch])
            for age in range(min(steps - 1, self._size)):  # age 0 = the newest existing row
                fraction = (age + 1) / steps  # distance back from the new observation
                position = (self._head - 1 - age) % self.length
                self._values[position, ch] = end + (start - end) * fraction

    # ---- reading -------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once ``length`` vectors have been pushed (the window is full)."""
        return self._size == self.length

    @property
    def size(self) -> int:
        return self._size

    @property
    def missing_count(self) -> int:
        """Cells of the pushed rows in the window that were filled, not observed."""
        return int(self._size * self.channels - self._ordered(self._observed).sum())

    def array(self) -> np.ndarray:
        """The window oldest-first as float32 ``[length, channels]``; never contains NaN."""
        return self._ordered(self._values)

    def observed_mask(self) -> np.ndarray:
        """Bool ``[length, channels]``: True where the value was observed, not filled."""
        return self._ordered(self._observed)

    def last(self) -> np.ndarray:
        """The newest row (float32 ``[channels]``), gap-filled — the stateful mode's input."""
        if not self._size:
            return np.zeros(self.channels, dtype=np.float32)
        return self._values[(self._head - 1) % self.length].copy()

    def _ordered(self, ring: np.ndarray) -> np.ndarray:
        # two slices, not np.roll: this runs per event per key, where roll's overhead dominated
        ordered = np.concatenate((ring[self._head :], ring[: self._head]))
        if self._size < self.length:
            ordered[: self.length - self._size] = 0
        return ordered
