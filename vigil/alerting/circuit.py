"""Protection for an endpoint that is failing: a circuit breaker, a retry budget, jittered back-off.

Together they keep a dead receiver from turning Vigil into a retry storm: the breaker stops
first attempts after repeated failures (a bounded number of probes after a cool-down decides when
to resume), the budget caps retries per minute however many alerts are waiting, and full jitter
spreads the retries that remain so they never arrive in lock-step. Pure logic with an injectable
clock; which notification a probe carries, and when the budget applies, is the delivery's
business.
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
    ``cooldown_s`` has passed, where at most ``half_open_probes`` probes may be out at a time; a
    probe's success closes it, a failure re-opens it for another cool-down."""

    def __init__(
        self, failure_threshold: int, cooldown_s: float, clock: Clock = time.monotonic, *,
        half_open_probes: int = 1,
    ) -> None:  # fmt: skip
        if failure_threshold < 1 or cooldown_s <= 0 or half_open_probes < 1:
            raise ValueError(
                "failure_threshold and half_open_probes must be >= 1 and cooldown_s > 0"
            )
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.half_open_probes = half_open_probes
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probes_out = 0

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
        """How many of ``wanted`` attempts may start now (half-open: the probes not yet out)."""
        state = self.state
        if state == "closed":
            return max(0, wanted)
        if state == "half_open":
            return max(0, min(wanted, self.half_open_probes - self._probes_out))
        return 0

    def try_acquire(self) -> bool:
        """Take a permit for one attempt; report its outcome with record_success/failure, or give
        it back with release() if the attempt never reached the endpoint."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and self._probes_out < self.half_open_probes:
            self._probes_out += 1
            return True
        return False

    def record_success(self) -> bool:
        """The endpoint answered; True when this closed a circuit that was open or half-open."""
        recovered = self._opened_at is not None
        self._failures = 0
        self._opened_at = None
        self._probes_out = 0
        return recovered

    def record_failure(self) -> None:
        self._failures += 1
        if self._probes_out or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
        self._probes_out = 0

    def release(self) -> None:
        """Give back a permit whose attempt never reached the endpoint."""
        self._probes_out = max(0, self._probes_out - 1)


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
