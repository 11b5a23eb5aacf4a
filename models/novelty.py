"""Contextual novelty: how much of what a key just did has never been seen before.

A detector of a different kind from the forecast-residual likelihood (:mod:`models.scoring`), in
the spirit of CAD OSE (NAB's "contextual anomaly detector", 69.9 on NAB's scoreboard): it does
not ask "how far is the value from the forecast" but "has this *pattern* of values occurred
before". Per event:

1. the value is quantised into one of ``bins`` equal bins over the range of values the key has
   seen so far (the range only grows; a value outside it gets its own bin, below or above);
2. the contexts ending at this event are the last ``k + 1`` bins for ``k = 0 .. orders`` (the
   bin itself, the transition into it, ...);
3. the **novelty** is the share of those contexts never seen before (in the memory below); then
   all of them are remembered.

So a value in a new part of the range, or an ordinary value arriving in an unusual order, scores
high; a series repeating its usual patterns scores 0.

**Bounded memory**: at most ``capacity`` contexts are remembered per key, each with the event
number it was last seen at; when the memory overflows, the least recently seen quarter is
forgotten (a pattern not seen for that long counts as new again).

**Rest period** (as CAD OSE's): after an event whose novelty reaches ``rest_threshold`` (0.75),
the next ``rest_events`` events report 0. One new pattern yields one alert, not a burst; and a
fresh key, whose first events are all new, stays quiet while it learns (its first event is
novel by definition).

Missing values (NaN) are not scored (0.0) and teach nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from vigil.models.state_codec import persistent

__all__ = ["CORROBORATION", "REST_THRESHOLD", "ContextNovelty", "FusionRule", "fuse_scores"]

REST_THRESHOLD = 0.75  # CAD OSE's base threshold: a novelty this high starts a rest period
_FORGET_SHARE = 0.25  # share of the memory forgotten, least recently seen first, on overflow


@persistent
@dataclass
class ContextNovelty:
    """Per-key contextual novelty detector (see the module doc)."""

    __state__: ClassVar[tuple[str, ...]] = ("low", "high", "history", "seen", "events", "quiet")

    bins: int = 8
    orders: int = 2
    capacity: int = 4096
    rest_events: int = 150
    low: float | None = field(default=None, init=False)  # range of values seen so far
    high: float | None = field(default=None, init=False)
    history: list[int] = field(default_factory=list, init=False)  # the last `orders` bins
    seen: dict[str, int] = field(default_factory=dict, init=False)  # context -> last event
    events: int = field(default=0, init=False)
    quiet: int = field(default=0, init=False)  # events left in the rest period

    def __post_init__(self) -> None:
        if self.bins < 1:
            raise ValueError(f"bins must be at least 1, got {self.bins}")
        if self.orders < 0:
            raise ValueError(f"orders must be >= 0, got {self.orders}")
        if self.capacity < 4 * (self.orders + 1):
            raise ValueError(f"capacity {self.capacity} is too small for {self.orders} orders")
        if self.rest_events < 0:
            raise ValueError(f"rest_events must be >= 0, got {self.rest_events}")

    def _bin(self, value: float) -> int:
        low, high = self.low, self.high
        if low is None or high is None:
            return 0
        if value < low:
            return -1
        if value > high:
            return self.bins
        if high == low:
            return 0
        # halves: the width of a range of finite doubles never overflows this way
        share = (value / 2 - low / 2) / (high / 2 - low / 2)
        return min(int(share * self.bins), self.bins - 1)

    def raw_novelty(self, value: float) -> float:
        """The share of this event's contexts never seen before, without learning it."""
        if not math.isfinite(value):
            return 0.0
        chain = [self._bin(value), *reversed(self.history)]
        contexts = [",".join(map(str, chain[: k + 1])) for k in range(len(chain))]
        return sum(c not in self.seen for c in contexts) / len(contexts)

    def score_one(self, value: float) -> float:
        """Score one value in [0, 1] (0 during a rest period), then learn it."""
        if not math.isfinite(value):
            return 0.0
        self.events += 1
        chain = [self._bin(value), *reversed(self.history)]
        novel = 0
        for k in range(len(chain)):
            context = ",".join(map(str, chain[: k + 1]))
            if context not in self.seen:
                novel += 1
            self.seen[context] = self.events
        novelty = novel / len(chain)
        if len(self.seen) > self.capacity:
            self._forget()
        if self.orders:
            self.history = [*self.history, chain[0]][-self.orders :]
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)
        reported = 0.0 if self.quiet > 0 else novelty
        if self.quiet > 0:
            self.quiet -= 1
        if novelty >= REST_THRESHOLD:
            self.quiet = self.rest_events
        return reported

    def _forget(self) -> None:
        keep = self.capacity - max(1, int(self.capacity * _FORGET_SHARE))
        newest = sorted(self.seen.items(), key=lambda kv: (-kv[1], kv[0]))[:keep]
        self.seen = dict(newest)


FusionRule = Literal["likelihood", "novelty", "max", "corroborated"]
CORROBORATION = 0.5  # the novelty at which it corroborates the likelihood (2 of 3 contexts new)


def fuse_scores(rule: FusionRule, likelihood: float, novelty: float, threshold: float) -> float:
    """The one published score from the detectors' parts (``DetectorConfig.fusion``).

    * ``likelihood`` / ``novelty``: that part alone;
    * ``max``: either detector alone can raise an alert;
    * ``corroborated``: the likelihood, but unless the novelty reaches ``CORROBORATION`` it is
      scaled by ``threshold`` and kept strictly below it — uncorroborated evidence still ranks,
      it just does not open an incident; corroborated, the larger of the two parts.
    """
    if rule == "likelihood":
        return likelihood
    if rule == "novelty":
        return novelty
    if rule == "max":
        return max(likelihood, novelty)
    if rule == "corroborated":
        if novelty >= CORROBORATION:
            return max(likelihood, novelty)
        return min(likelihood * threshold, math.nextafter(threshold, 0.0))
    raise ValueError(f"unknown fusion rule {rule!r}")
