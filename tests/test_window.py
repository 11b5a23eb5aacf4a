"""WindowBuffer: ring order, gap policies (never NaN), persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.models.state_codec import dumps, loads
from vigil.models.window import GapPolicy, WindowBuffer


def test_ring_keeps_the_last_length_rows_oldest_first() -> None:
    buffer = WindowBuffer(length=4, channels=2)
    for k in range(6):
        buffer.push([k, 10 * k])
        assert buffer.ready == (k >= 3)
    window = buffer.array()
    assert window.dtype == np.float32 and window.shape == (4, 2)
    np.testing.assert_array_equal(window[:, 0], [2, 3, 4, 5])
    np.testing.assert_array_equal(buffer.last(), [5, 50])


def test_not_ready_window_is_front_padded_with_zeros() -> None:
    buffer = WindowBuffer(length=5, channels=1)
    buffer.push([1.5])
    buffer.push([2.5])
    assert not buffer.ready
    np.testing.assert_array_equal(buffer.array()[:, 0], [0, 0, 0, 1.5, 2.5])
    assert buffer.observed_mask()[:, 0].tolist() == [False, False, False, True, True]


def test_carry_forward_repeats_the_last_observation() -> None:
    buffer = WindowBuffer(length=5, channels=2, gap_policy="carry_forward")
    for row in ([1.0, None], [None, 4.0], [None, None], [3.0, float("nan")], [None, 6.0]):
        buffer.push(row)
    np.testing.assert_array_equal(
        buffer.array(), [[1, 0], [1, 4], [1, 4], [3, 4], [3, 6]]
    )  # a channel never seen yet reads 0
    assert buffer.missing_count == 6


def test_interpolate_rewrites_a_closed_gap_on_a_straight_line() -> None:
    buffer = WindowBuffer(length=6, channels=1, gap_policy=GapPolicy.INTERPOLATE)
    buffer.push([1.0])
    buffer.push([None])
    buffer.push([None])
    # at the edge nothing later is known: carried forward
    np.testing.assert_array_equal(buffer.array()[-3:, 0], [1, 1, 1])
    buffer.push([4.0])
    np.testing.assert_allclose(buffer.array()[-4:, 0], [1, 2, 3, 4])
    assert buffer.observed_mask()[-4:, 0].tolist() == [True, False, False, True]


def test_interpolate_when_the_gap_start_has_left_the_window() -> None:
    buffer = WindowBuffer(length=3, channels=1, gap_policy=GapPolicy.INTERPOLATE)
    buffer.push([0.0])
    for _ in range(4):
        buffer.push([None])
    buffer.push([10.0])  # 5 steps after the 0.0; rows at 6, 8 and the new 10 remain
    np.testing.assert_allclose(buffer.array()[:, 0], [6, 8, 10])


def test_mask_zero_fills_and_counts() -> None:
    buffer = WindowBuffer(length=4, channels=2, gap_policy=GapPolicy.MASK)
    for row in ([1.0, 2.0], [None, 3.0], [None, None], [4.0, 5.0]):
        buffer.push(row)
    np.testing.assert_array_equal(buffer.array(), [[1, 2], [0, 3], [0, 0], [4, 5]])
    assert buffer.missing_count == 3
    buffer.push([1.0, 1.0])  # the first row (no gaps) leaves; the gaps stay
    assert buffer.missing_count == 3


def test_bad_input_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="gap policy"):
        WindowBuffer(4, 1, "average")
    buffer = WindowBuffer(4, 2)
    with pytest.raises(ValueError, match="expected 2 values"):
        buffer.push([1.0])


@pytest.mark.parametrize("policy", list(GapPolicy))
def test_round_trip_through_json(policy: GapPolicy) -> None:
    buffer = WindowBuffer(length=5, channels=2, gap_policy=policy)
    for k in range(7):
        buffer.push([float(k) if k % 3 else None, -float(k)])
    restored = loads(dumps(buffer), WindowBuffer)
    np.testing.assert_array_equal(restored.array(), buffer.array())
    np.testing.assert_array_equal(restored.observed_mask(), buffer.observed_mask())
    # both continue identically, including a gap that closes after the restore
    for row in ([None, 1.0], [9.0, None]):
        buffer.push(row)
        restored.push(row)
    np.testing.assert_array_equal(restored.array(), buffer.array())
    assert restored.missing_count == buffer.missing_count


values = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.floats(min_value=-1e6, max_value=1e6),
)


@settings(max_examples=60, deadline=None)
@given(
    policy=st.sampled_from(list(GapPolicy)),
    rows=st.lists(st.lists(values, min_size=2, max_size=2), min_size=1, max_size=30),
)
def test_no_policy_ever_produces_nan(policy: GapPolicy, rows: list[list[float | None]]) -> None:
    buffer = WindowBuffer(length=8, channels=2, gap_policy=policy)
    for row in rows:
        buffer.push(row)
        assert np.isfinite(buffer.array()).all()
        assert np.isfinite(buffer.last()).all()
    observed = sum(1 for row in rows[-8:] for v in row if v is not None and math.isfinite(v))
    assert buffer.missing_count == 2 * min(len(rows), 8) - observed
