"""The alert log: a capped Redis stream of every alert accepted, once per (alert id, status).

It is what ``/alerts`` and ``vigil alerts list`` show. Entries are appended by the alerts
consumer in the same script that hands the alert to the dispatcher (see
:class:`~vigil.alerting.grouping.AlertGroupBuffer`), so the log and the deliveries never disagree,
and an entry's id is its write time, which is what ``since`` filters on.

Layout: ``vigil:{app_id}:alerts``, a stream of ``{"alert": <Alert JSON>, "ts": <alert start>}``
trimmed (approximately) to ``maxlen`` entries.
"""

from __future__ import annotations

import json
import math
from typing import Any

from redis.asyncio import Redis

MAX_QUERY_LIMIT = 10_000


class AlertQueryError(ValueError):
    """A query of the log that cannot be served; the message says which parameter and why."""


def parse_query(
    since: str | None, limit: str | None, *, now: float, default_window_s: float = 3600.0
) -> tuple[float, int]:
    """``(since, limit)`` from query parameters: epoch seconds (default: ``default_window_s``
    ago) and a positive count (default 500, capped at ``MAX_QUERY_LIMIT``)."""
    try:
        start = float(since) if since is not None else now - default_window_s
    except ValueError:
        raise AlertQueryError(f"since must be epoch seconds, got {since!r}") from None
    if not math.isfinite(start):
        raise AlertQueryError(f"since must be a finite number, got {since!r}")
    try:
        count = int(limit) if limit is not None else 500
    except ValueError:
        raise AlertQueryError(f"limit must be a positive integer, got {limit!r}") from None
    if count < 1:
        raise AlertQueryError(f"limit must be a positive integer, got {limit!r}")
    return start, min(count, MAX_QUERY_LIMIT)


class AlertLog:
    """Reads the alert stream; its key and cap are what the accepting script writes with."""

    def __init__(self, redis: Redis, app_id: str, *, maxlen: int) -> None:
        self.redis = redis
        self.key = f"vigil:{app_id}:alerts"
        self.maxlen = maxlen

    async def since(self, since: float, limit: int = 500) -> list[dict[str, Any]]:
        """Alerts whose entry was written at or after ``since`` (epoch seconds), oldest first."""
        start = f"{max(0, int(since * 1000))}-0"
        entries = await self.redis.xrange(self.key, min=start, max="+", count=limit)
        return [json.loads(fields[b"alert"]) for _id, fields in entries or [] if fields]
