"""Calendar context from an event's timestamp: time of day and day of week as sin/cos pairs.

Many series follow the clock (taxi demand, server load, traffic): a forecaster that sees only
the last ``window`` values cannot tell a Monday morning from a Sunday night, or foresee the
evening rise from the afternoon. These four extra model inputs tell it where in the day and the
week each row of its window is; sin/cos keep 23:59 next to 00:00 and Sunday next to Monday.
UTC, from the event's own timestamp (never the wall clock), so a replay sees what the live
stream saw.
"""

from __future__ import annotations

import math

__all__ = ["CALENDAR_FEATURES", "NO_CALENDAR", "calendar_features"]

CALENDAR_FEATURES = 4  # sin/cos of the time of day, sin/cos of the day of the week
NO_CALENDAR = (0.0,) * CALENDAR_FEATURES  # irregular keys and models without the inputs
_DAY = 86_400.0
_WEEK = 7 * _DAY
_EPOCH_WEEKDAY_SHIFT = 3 * _DAY  # 1970-01-01 was a Thursday: shift so that weeks start Monday


def calendar_features(ts: float) -> tuple[float, float, float, float]:
    """``(sin, cos)`` of the UTC time of day and of the day of the week (Monday 00:00 = angle 0)."""
    day = 2.0 * math.pi * ((ts % _DAY) / _DAY)
    week = 2.0 * math.pi * (((ts + _EPOCH_WEEKDAY_SHIFT) % _WEEK) / _WEEK)
    return (math.sin(day), math.cos(day), math.sin(week), math.cos(week))
