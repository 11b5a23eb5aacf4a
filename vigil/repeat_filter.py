"""Keeps an outage from flooding the log: a warning or error repeated within a window is
counted instead of printed, and the count goes out with the next one that is printed.

The Kafka client logs each failed connection attempt (thousands in a 30 s broker outage); Vigil's
own code already logs one line per outage state change (:mod:`vigil.outage`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

WINDOW_S = 30.0


class RepeatedMessageFilter(logging.Filter):
    def __init__(self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self.last: dict[tuple[str, int, str], float] = {}
        self.suppressed: dict[tuple[str, int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        last = self.last.get(key)
        if last is not None and now - last < self.window_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        self.last[key] = now
        hidden = self.suppressed.pop(key, 0)
        if hidden:
            record.msg = (
                f"{record.msg} ({hidden} similar messages in the last {self.window_s:.0f} s)"
            )
        if len(self.last) > 10_000:  # bounded: forget the oldest templates
            for old in sorted(self.last, key=self.last.__getitem__)[:5_000]:
                del self.last[old]
        return True


def install(logger: logging.Logger | None = None) -> RepeatedMessageFilter:
    """Attach one filter to every handler of ``logger`` (the root logger by default)."""
    target = logger or logging.getLogger()
    found = [f for h in target.handlers for f in h.filters if isinstance(f, RepeatedMessageFilter)]
    if found:
        return found[0]
    repeat_filter = RepeatedMessageFilter()
    for handler in target.handlers:
        handler.addFilter(repeat_filter)
    return repeat_filter
