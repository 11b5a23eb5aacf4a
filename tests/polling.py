"""Wait for an eventually-true condition in integration tests (outputs land before state)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(probe: Callable[[], T], *, timeout_s: float = 10.0, interval_s: float = 0.1) -> T:
    """Call `probe` until it returns a truthy value without raising; re-raise the last failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = probe()
            if result:
                return result
            failure: BaseException | None = AssertionError(f"{probe} stayed falsy ({result!r})")
        except (AssertionError, KeyError, TypeError) as exc:
            failure = exc
        if time.monotonic() > deadline:
            assert failure is not None
            raise failure
        time.sleep(interval_s)
