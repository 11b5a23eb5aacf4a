"""The contextual novelty detector and the fusion of the detectors' parts into one score."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from vigil.bench.replay_harness import ReplayHarness
from vigil.models.novelty import CORROBORATION, ContextNovelty, fuse_scores
from vigil.records import Prediction
from vigil.settings import ModelGroup


def periodic(n: int) -> list[float]:
    return [float(v) for v in (10 + 5 * np.sin(2 * np.pi * np.arange(n) / 16)).round(6)]


def test_a_repeating_pattern_becomes_familiar_and_a_new_one_stands_out() -> None:
    detector = ContextNovelty(bins=8, orders=2, rest_events=0)
    scores = [detector.score_one(v) for v in periodic(400)]
    assert scores[0] == 1.0  # everything is new at first
    assert max(scores[100:]) == 0.0  # a pattern seen many times is nothing new
    # a value beyond the range seen so far: the "above the range" bin was met while the range
    # grew at first, but no context leading into it from the settled cycle was
    assert detector.score_one(100.0) == 2 / 3
    # ordinary values in an order never seen: the bins are known, the transitions are not
    fresh = ContextNovelty(bins=8, orders=2, rest_events=0)
    for v in periodic(400):
        fresh.score_one(v)
    low, high = 5.0, 15.0
    fresh.score_one(low)
    jump = fresh.score_one(high)  # a jump from the bottom to the top of the cycle
    assert 0.0 < jump < 1.0


def test_rest_period_reports_zero_after_a_high_novelty() -> None:
    detector = ContextNovelty(bins=4, orders=1, rest_events=5)
    assert detector.score_one(0.0) == 1.0
    assert detector.score_one(100.0) == 0.0  # all new, but resting: the rest starts again
    assert detector.quiet == 5
    assert [detector.score_one(0.0) for _ in range(5)] == [0.0] * 5  # "0,4" was new: still 0
    assert detector.quiet == 0
    assert detector.score_one(-100.0) == 1.0  # after the rest, novelty is reported again


def test_memory_is_bounded_and_forgets_the_least_recent() -> None:
    rng = random.Random(3)
    detector = ContextNovelty(bins=64, orders=3, capacity=200, rest_events=0)
    for _ in range(5000):
        detector.score_one(rng.random())
        assert len(detector.seen) <= 200
    newest = max(detector.seen.values())
    assert newest == detector.events  # the latest contexts are always kept


def test_missing_values_score_zero_and_teach_nothing() -> None:
    detector = ContextNovelty()
    detector.score_one(1.0)
    before = dict(detector.seen), detector.events
    assert detector.score_one(math.nan) == 0.0
    assert (dict(detector.seen), detector.events) == before


@pytest.mark.parametrize(
    ("rule", "likelihood", "novelty", "expected"),
    [
        ("likelihood", 0.995, 1.0, 0.995),
        ("novelty", 0.995, 1 / 3, 1 / 3),
        ("max", 0.2, 1.0, 1.0),
        ("max", 0.999, 0.0, 0.999),
        ("corroborated", 0.999, 2 / 3, 0.999),  # corroborated: the larger part
        ("corroborated", 0.5, 1.0, 1.0),
        ("corroborated", 0.999, 0.0, 0.999 * 0.99),  # alone: scaled below the threshold
    ],
)
def test_fusion_rules(rule: str, likelihood: float, novelty: float, expected: float) -> None:
    assert fuse_scores(rule, likelihood, novelty, 0.99) == pytest.approx(expected)  # type: ignore[arg-type]


def test_uncorroborated_evidence_never_reaches_the_threshold() -> None:
    below = fuse_scores("corroborated", 1.0, CORROBORATION / 2, 0.99)
    assert below < 0.99
    lower = fuse_scores("corroborated", 0.9, 0.0, 0.99)
    assert lower < fuse_scores("corroborated", 0.95, 0.0, 0.99)


@pytest.mark.parametrize("fusion", ["likelihood", "max", "corroborated", "novelty"])
def test_the_stream_publishes_the_fused_score_and_its_parts(fusion: str) -> None:
    group = ModelGroup.model_validate(
        {
            "name": "fusion",
            "model": {"window": 8, "hidden_size": 8, "horizon": 1},
            "detector": {"fusion": fusion, "warmup_events": 10, "long_window": 100,
                         "novelty_rest_events": 20},
        }
    )  # fmt: skip
    values = np.array(periodic(300))
    values[200] = 60.0  # a spike: new to both detectors
    with ReplayHarness(group, train=False) as harness:
        out = harness.process(harness.events(1.7e9 + 60 * np.arange(300), values))
    assert out.predictions
    for p in out.predictions:
        assert p.score_parts is not None
        assert set(p.score_parts) == {"likelihood", "novelty", "range"}
        parts = p.score_parts
        fused = fuse_scores(fusion, parts["likelihood"], parts["novelty"], 0.99)  # type: ignore[arg-type]
        assert p.score == max(fused, parts["range"])  # a range break overrides any rule
        assert Prediction.model_validate_json(p.model_dump_json()) == p
    spike = next(p for p in out.predictions if p.observed == 60.0)
    assert spike.score_parts is not None and spike.score_parts["novelty"] >= 2 / 3
    assert spike.score_parts["range"] == 1.0 and spike.score == 1.0
