"""The log filter that keeps an outage from flooding the log (pure logic, a fake clock)."""

from __future__ import annotations

import logging

from vigil.repeat_filter import RepeatedMessageFilter


def record(msg: str, level: int = logging.ERROR, name: str = "aiokafka") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_repeats_within_the_window_are_counted_not_printed() -> None:
    now = [0.0]
    repeat = RepeatedMessageFilter(window_s=30, clock=lambda: now[0])
    assert repeat.filter(record("Unable connect to %s"))
    shown = 0
    for i in range(1, 100):
        now[0] = i * 0.1
        shown += repeat.filter(record("Unable connect to %s"))
    assert shown == 0
    now[0] = 31.0
    again = record("Unable connect to %s")
    assert repeat.filter(again)
    assert "99 similar messages" in str(again.msg)


def test_other_messages_and_info_lines_pass() -> None:
    repeat = RepeatedMessageFilter(window_s=30, clock=lambda: 0.0)
    assert repeat.filter(record("a"))
    assert repeat.filter(record("b"))
    assert repeat.filter(record("a", name="faust"))
    assert all(repeat.filter(record("a", level=logging.INFO)) for _ in range(5))
    assert not repeat.filter(record("a"))
