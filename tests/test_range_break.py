"""The range-break part: a value beyond every value a key has shown, by a share of that range."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vigil.bench.replay_harness import ReplayHarness
from vigil.models.range_break import RangeBreak
from vigil.settings import DetectorConfig, ModelGroup


def test_only_a_clear_new_extreme_breaks_the_range() -> None:
    detector = RangeBreak(tolerance=0.1, warmup=2)
    assert [detector.score_one(v) for v in (0.0, 10.0)] == [0.0, 0.0]  # warming up
    assert detector.score_one(10.5) == 0.0  # beyond, but within 10% of the range
    assert (detector.low, detector.high) == (0.0, 10.5)
    assert detector.score_one(11.6) == 1.0  # more than 1.05 above the high
    assert detector.score_one(-1.3) == 1.0  # and below the low
    assert detector.score_one(5.0) == 0.0
    assert (detector.low, detector.high) == (-1.3, 11.6)  # the range only grows


def test_warm_up_flat_range_and_missing_values() -> None:
    detector = RangeBreak(tolerance=0.0, warmup=3)
    assert [detector.score_one(v) for v in (1.0, 1.0, 1.0, 1.0)] == [0.0] * 4  # no scale yet
    assert detector.score_one(2.0) == 0.0 and detector.score_one(2.5) == 1.0
    for missing in (math.nan, math.inf, -math.inf):
        assert detector.score_one(missing) == 0.0
    assert (detector.low, detector.high, detector.events) == (1.0, 2.5, 6)  # taught nothing
    huge = RangeBreak(warmup=0)
    huge.score_one(-1.7e308)
    huge.score_one(1.7e308)  # a range wider than the largest double: no overflow
    assert huge.score_one(0.0) == 0.0


@pytest.mark.parametrize("tolerance", [-0.1, math.nan, math.inf])
def test_bad_tolerance(tolerance: float) -> None:
    with pytest.raises(ValueError, match="tolerance"):
        RangeBreak(tolerance=tolerance)


def test_the_stream_publishes_the_part_and_it_can_be_turned_off() -> None:
    values = 10 + np.sin(np.arange(300) * 2 * np.pi / 24)
    values[250] = 12.0  # 1 above the high of 11, range 2: a break at 5%
    stamps = 1.7e9 + 60 * np.arange(300)
    for tolerance, expected in ((0.05, 1.0), (None, None)):
        detector = {"warmup_events": 10, "long_window": 100, "range_tolerance": tolerance}
        group = ModelGroup.model_validate(
            {"name": "g", "model": {"window": 8, "hidden_size": 8}, "detector": detector}
        )
        with ReplayHarness(group, train=False) as harness:
            out = harness.process(harness.events(stamps, values))
        spike = next(p for p in out.predictions if p.observed == 12.0)
        assert spike.score_parts is not None
        assert spike.score_parts.get("range") == expected
        if expected is not None:
            assert spike.score == 1.0 and spike.anomaly
            others = [p for p in out.predictions if p is not spike and p.score_parts]
            assert all(p.score_parts["range"] == 0.0 for p in others if p.timestamp > stamps[20])
    assert DetectorConfig().range_tolerance == 0.05
