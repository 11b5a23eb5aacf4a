"""ReplayBuffer: bounded, recent/older mix per fraction, holdout never trained on, thread-safe."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from vigil.models.replay import ReplayBuffer

T, H = 4, 1


def _example(i: int) -> tuple[np.ndarray, np.ndarray]:
    """An example whose every value is its own index, so a sample says where it came from."""
    return np.full((T, 1), float(i)), np.full((H, 1), float(i))


def _fill(buffer: ReplayBuffer, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        assert buffer.add(*_example(i))


def _ids(x: np.ndarray) -> np.ndarray:
    return x[:, 0, 0].astype(int)


def test_memory_is_bounded_by_capacity() -> None:
    buffer = ReplayBuffer(capacity=40, recent_fraction=0.5, holdout_size=4, seed=1)
    _fill(buffer, 1000)
    assert len(buffer) == 40
    assert buffer.added == 1000
    assert buffer.holdout_count == 4
    assert buffer.trainable == 36
    regions = (buffer._holdout, buffer._recent, buffer._older)
    assert sum(r.x.nbytes for r in regions if r is not None) == 40 * T * 1 * 4


def test_holdout_is_the_newest_examples_and_never_sampled() -> None:
    buffer = ReplayBuffer(capacity=64, recent_fraction=0.5, holdout_size=8, seed=2)
    _fill(buffer, 500)
    hx, hy = buffer.holdout()
    assert _ids(hx).tolist() == list(range(492, 500))  # oldest first
    assert (hy[:, 0, 0] == hx[:, 0, 0]).all()
    seen: set[int] = set()
    for _ in range(300):
        x, y = buffer.sample(32)
        assert (x[:, 0, 0] == y[:, 0, 0]).all()  # windows stay paired with their targets
        seen.update(_ids(x).tolist())
    assert seen.isdisjoint(range(492, 500))
    assert max(seen) == 491  # the example that just left the holdout is trainable


def test_batches_mix_recent_and_older_by_fraction() -> None:
    buffer = ReplayBuffer(capacity=1000, recent_fraction=0.3, holdout_size=50, seed=3)
    _fill(buffer, 20_000)
    newest_trainable = 20_000 - 50
    recent_ids = range(newest_trainable - buffer.recent_capacity, newest_trainable)
    drawn = np.concatenate([_ids(buffer.sample(64)[0]) for _ in range(400)])
    share_recent = np.isin(drawn, recent_ids).mean()
    assert share_recent == pytest.approx(0.3, abs=0.02)


def test_older_examples_are_a_uniform_reservoir_of_the_whole_past() -> None:
    buffer = ReplayBuffer(capacity=400, recent_fraction=0.0, holdout_size=20, seed=4)
    _fill(buffer, 20_000)
    older_end = 20_000 - 20 - buffer.recent_capacity  # ids below this ever left the ring
    drawn = np.concatenate([_ids(buffer.sample(64)[0]) for _ in range(200)])
    assert drawn.max() < older_end
    # Uniform over [0, older_end): mean near the middle, the oldest quarter well represented.
    assert drawn.mean() == pytest.approx(older_end / 2, rel=0.15)
    assert (drawn < older_end / 4).mean() > 0.15


def test_until_older_exist_every_row_is_recent() -> None:
    buffer = ReplayBuffer(capacity=100, recent_fraction=0.0, holdout_size=10, seed=5)
    _fill(buffer, 30)  # 10 in the holdout, 20 in the recent ring, none older
    x, _ = buffer.sample(50)
    assert set(_ids(x).tolist()) <= set(range(20))


def test_nonfinite_examples_are_dropped_not_stored() -> None:
    buffer = ReplayBuffer(capacity=32, recent_fraction=0.5, holdout_size=4, seed=6)
    window, target = _example(1)
    window[2, 0] = np.nan
    assert buffer.add(window, target) is False
    assert buffer.add(*_example(2)) is True
    assert buffer.add(np.zeros((T, 1)), np.full((H, 1), np.inf)) is False
    assert len(buffer) == 1
    assert buffer.dropped_nonfinite == 2


def test_bad_shapes_and_arguments_raise() -> None:
    buffer = ReplayBuffer(capacity=32, recent_fraction=0.5, holdout_size=4)
    buffer.add(*_example(0))
    with pytest.raises(ValueError, match="differ"):
        buffer.add(np.zeros((T + 1, 1)), np.zeros((H, 1)))
    with pytest.raises(ValueError, match=r"\[T, F\]"):
        buffer.add(np.zeros(T), np.zeros((H, 1)))
    with pytest.raises(ValueError, match="no training examples"):
        buffer.sample(4)  # the only example is in the holdout
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(capacity=10, recent_fraction=0.5, holdout_size=9)
    with pytest.raises(ValueError, match="recent_fraction"):
        ReplayBuffer(capacity=32, recent_fraction=1.5, holdout_size=4)


def test_concurrent_add_and_sample() -> None:
    buffer = ReplayBuffer(capacity=256, recent_fraction=0.5, holdout_size=16, seed=7)
    _fill(buffer, 64)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            _fill(buffer, 20_000, start=64)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    batches = 0
    while not done.is_set():
        x, y = buffer.sample(16)
        assert (x[:, :, 0] == y[:, :1, 0]).all()  # never a torn, half-written example
        batches += 1
    thread.join()
    assert not errors
    assert batches > 0
    assert len(buffer) == 256 and buffer.added == 20_064
