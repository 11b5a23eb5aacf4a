"""TrainingAdmission: flagged events stay out of training until a shift proves persistent."""

from __future__ import annotations

import pytest

from vigil.models.admission import TrainingAdmission
from vigil.models.state_codec import dumps, loads


def test_flagged_events_are_kept_out() -> None:
    gate = TrainingAdmission(readmit_after=5)
    decisions = [gate.admit(flag) for flag in [False, True, True, False, True, False]]
    assert decisions == [True, False, False, True, False, True]
    assert gate.withheld == 3
    assert not gate.in_level_shift


def test_persistent_shift_is_readmitted_after_n_flagged_events() -> None:
    gate = TrainingAdmission(readmit_after=4)
    decisions = [gate.admit(True) for _ in range(10)]
    assert decisions == [False] * 3 + [True] * 7
    assert gate.in_level_shift
    # The shift ends (an unflagged event): the next incident is kept out again.
    assert gate.admit(False)
    assert not gate.in_level_shift
    assert gate.admit(True) is False


def test_interrupted_streaks_do_not_add_up() -> None:
    gate = TrainingAdmission(readmit_after=3)
    pattern = [True, True, False] * 10
    assert [gate.admit(f) for f in pattern] == [False, False, True] * 10


def test_zero_turns_the_gate_off() -> None:
    gate = TrainingAdmission(readmit_after=0)
    assert all(gate.admit(flag) for flag in [True, True, False, True])
    assert gate.withheld == 0


def test_state_round_trips_through_json_mid_streak() -> None:
    gate = TrainingAdmission(readmit_after=3)
    gate.admit(True)
    gate.admit(True)
    restored = loads(dumps(gate), TrainingAdmission)
    assert restored == gate
    assert restored.admit(True) is True  # the third flagged event in a row, across a restart


def test_negative_threshold_is_rejected() -> None:
    with pytest.raises(ValueError, match="readmit_after"):
        TrainingAdmission(readmit_after=-1)
