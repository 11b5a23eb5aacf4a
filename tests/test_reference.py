"""Reference mode: a known-normal period, then departures from it flagged as long as they last."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vigil.bench.replay_harness import ReplayHarness
from vigil.models.reference import ReferenceProfile, min_reference_events
from vigil.models.state_codec import dumps, loads
from vigil.settings import ModelGroup

REFERENCE = 600


def plant(n: int, seed: int = 0) -> np.ndarray:
    """Three channels of a healthy plant: two oscillations and a noisy level; [n, 3]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.stack(
        [
            np.sin(2 * np.pi * t / 50) + 0.05 * rng.normal(size=n),
            5.0 + 0.5 * np.cos(2 * np.pi * t / 80) + 0.05 * rng.normal(size=n),
            2.0 + 0.1 * rng.normal(size=n),
        ],
        axis=1,
    )


def scores_of(profile: ReferenceProfile, rows: np.ndarray) -> np.ndarray:
    return np.array([profile.score_one(row.tolist()) for row in rows])


def test_a_sustained_mean_shift_is_flagged_for_its_whole_duration_and_clears_after() -> None:
    rows = plant(1800)
    start, end = 1000, 1300
    rows[start:end, 2] += 0.6  # the level channel runs hot: 6 of its noise's standard deviations
    profile = ReferenceProfile(channels=3, events=REFERENCE)
    scores = scores_of(profile, rows)
    assert (scores[:REFERENCE] == 0.0).all()  # the reference is normal by definition
    assert profile.ready
    # flagged as soon as a quarter of the sliding window holds the fault, until it ends
    assert (scores[start + profile.window // 4 : end] >= 0.99).all()
    # and it clears once the window and the autoregression's lags have slid past the fault
    after = scores[end + profile.window + profile.order :]
    assert (after < 0.99).mean() > 0.97
    assert (scores[REFERENCE:start] < 0.99).mean() > 0.97  # few false alarms before


def test_a_long_fault_is_not_learned_as_the_new_normal() -> None:
    rows = plant(REFERENCE + 3000)
    rows[REFERENCE + 200 :, 2] += 0.6  # the level runs hot and stays so
    profile = ReferenceProfile(channels=3, events=REFERENCE)
    scores = scores_of(profile, rows)
    early = (scores[REFERENCE + 250 : REFERENCE + 750] >= 0.99).mean()
    late = (scores[-500:] >= 0.99).mean()  # 2 800 events later it is still a fault
    assert late == early == 1.0  # nothing wore off
    assert scores[-500:].min() >= 0.99


def test_a_changed_frequency_within_the_usual_range_is_flagged() -> None:
    rows = plant(1600)
    t = np.arange(1000, 1300)
    rows[1000:1300, 0] = np.sin(2 * np.pi * t / 15)  # same range, faster
    scores = scores_of(ReferenceProfile(channels=3, events=REFERENCE), rows)
    assert (scores[1000 + 10 : 1300] >= 0.99).mean() > 0.95


def test_missing_values_are_tolerated_and_a_fully_missing_row_keeps_the_score() -> None:
    rows = plant(900)
    rows[::17, 1] = np.nan
    profile = ReferenceProfile(channels=3, events=REFERENCE)
    scores = scores_of(profile, rows)
    assert np.isfinite(scores).all()
    before = profile.score_one([10.0, 10.0, 10.0])
    assert profile.score_one([math.nan, math.nan, math.nan]) == before


def test_state_round_trips_in_the_middle_of_a_fault() -> None:
    rows = plant(1200)
    rows[800:, 1] -= 1.0
    profile = ReferenceProfile(channels=3, events=REFERENCE)
    scores_of(profile, rows[:900])
    restored = loads(dumps(profile), ReferenceProfile)
    assert restored.rows == [] and restored.ready  # no reference rows kept after the freeze
    np.testing.assert_array_equal(scores_of(restored, rows[900:]), scores_of(profile, rows[900:]))


def test_parameters_are_checked() -> None:
    assert min_reference_events(order=24, window=20, smooth=1) == 142
    with pytest.raises(ValueError, match="events"):
        ReferenceProfile(channels=2, events=100)
    with pytest.raises(ValueError, match="channels"):
        ReferenceProfile(channels=0)
    with pytest.raises(ValueError, match="expected 2 values"):
        ReferenceProfile(channels=2).score_one([1.0])


def reference_group(mode: str = "first_events") -> ModelGroup:
    return ModelGroup.model_validate(
        {
            "name": "plant",
            "channels": ["swing", "wave", "level"],
            "model": {"input_size": 3, "window": 8, "hidden_size": 8, "horizon": 1},
            "training": {"min_examples": 64, "steps_per_round": 4},
            "detector": {
                "warmup_events": 32,
                "reference": {"mode": mode, "events": REFERENCE},
            },
        }
    )


def test_the_stream_flags_a_sustained_fault_in_reference_mode_and_keeps_it_out_of_training() -> (
    None
):
    rows = plant(1400)
    start, end = 900, 1150
    rows[start:end, 2] += 0.6
    stamps = 1.7e9 + np.arange(len(rows), dtype=np.float64)
    with ReplayHarness(reference_group(), seed=0) as harness:
        events = harness.events(stamps, rows)
        outputs = [harness.process(events[i : i + 128]) for i in range(0, len(events), 128)]
    predictions = [p for out in outputs for p in out.predictions]
    flags = np.zeros(len(rows), dtype=bool)
    for p in predictions:
        assert {"likelihood", "reference"} <= set(p.score_parts)
        assert p.score == p.score_parts["reference"]  # fusion "reference": the part alone
        flags[p.provenance.offset] = p.anomaly
    assert flags[start + 10 : end].all()  # flagged from the start to the end of the fault
    assert not flags[end + 40 :].any()  # cleared after it
    assert flags[REFERENCE:start].mean() < 0.05
    withheld = sum(out.outcomes["withheld_from_training"] for out in outputs)
    assert withheld >= end - start - 20  # the fault did not teach the model


def test_reference_mode_off_publishes_no_reference_part() -> None:
    rows = plant(80)
    with ReplayHarness(reference_group("off"), seed=0, train=False) as harness:
        output = harness.process(harness.events(np.arange(80.0), rows))
    assert output.predictions
    assert all("reference" not in p.score_parts for p in output.predictions)


def test_a_changed_reference_setting_starts_a_new_reference() -> None:
    rows = plant(130)
    with ReplayHarness(reference_group(), seed=0, train=False) as before:
        before.process(before.events(np.arange(120.0), rows[:120]))
        states = before.states
        later = before.events(np.arange(120.0, 130.0), rows[120:])  # offsets carry on
    assert states["series"].reference is not None
    assert states["series"].reference.seen == 120  # every accepted event, window filling or not
    longer = reference_group().model_copy(deep=True)
    longer.detector.reference.events = 800
    with ReplayHarness(longer, seed=0, train=False) as after:
        after.states = states
        after.process(later)
    profile = after.states["series"].reference
    assert profile is not None and (profile.events, profile.seen) == (800, 10)
