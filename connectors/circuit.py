"""Protection for an endpoint that is failing: a circuit breaker, a retry budget, jittered back-off.

Together they keep a dead receiver from turning Vigil into a retry storm: the breaker stops
first attempts after repeated failures (one probe after a cool-down decides when to resume), the
budget caps retries per minute however many alerts are waiting, and full jitter spreads the
retries that remain so they never arrive in lock-step. Pure logic with an injectable clock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Literal

CircuitState = Literal["closed", "open", "half_open"]
Clock = Callable[[], float]


def full_jitter_backoff(
    attempt: int, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = first retry): uniform in
    ``[0, min(max_s, base_s * 2**(attempt-1))]`` (AWS "full jitter")."""
    ceiling = min(max_s, base_s * 2.0 ** max(0, min(attempt - 1, 62)))
    return (rng or random).uniform(0.0, ceiling)


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` failures in a row; open → half-open once
    ``cooldown_s`` has passed, where exactly one probe may go; the probe's outcome closes or
    re-opens it."""

    def __init__(
        self, failure_threshold: int, cooldown_s: float, clock: Clock = time.monotonic
    ) -> None:
        if failure_threshold < 1 or cooldown_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_s > 0")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_out = False

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def retry_after(self) -> float:
        """Seconds until an attempt may be allowed (0 when one may go now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown_s - self._clock())

    def permits(self, wanted: int) -> int:
        """How many of ``wanted`` attempts may start now (half-open: one probe at a time)."""
        state = self.state
        if state == "closed":
            return wanted
        if state == "half_open" and not self._probe_out:
            return min(1, wanted)
        return 0

    def try_acquire(self) -> bool:
        """Take a permit for one attempt; report its outcome with record_success/failure."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probe_out = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probe_out or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
        self._probe_out = False

    def release(self) -> None:
        """Give back a permit whose attempt never reached the endpoint."""
        self._probe_out = False


class RetryBudget:
    """Token bucket for retries: ``per_minute`` tokens a minute, bursts up to ``per_minute``."""

    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be >= 1")
        self.capacity = float(per_minute)
        self.rate_per_s = per_minute / 60.0
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate_per_s)
        self._stamp = now

    def try_acquire(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until a token is available."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate_per_s)
