"""A bounded replay buffer for online fine-tuning: recent examples, a reservoir of older ones,
and a held-back slice that training never sees.

Why three regions: fine-tuning only on the latest events chases noise and forgets the rest of the
series (catastrophic forgetting); fine-tuning only on a uniform sample reacts too slowly to a
regime change. A batch therefore mixes the RECENT ring and a uniform reservoir sample of OLDER
examples, in a proportion set by ``recent_fraction``. The newest ``holdout_size`` examples are
kept apart: the trainer scores the candidate against the live model on them (shadow evaluation),
and a score on data the candidate was trained on would say nothing.

Examples flow one way: newest → holdout → recent ring → older reservoir. An example in the
holdout has never been outside it, so a holdout snapshot taken at evaluation time contains no
example any candidate was trained on.

Thread-safe: the stream adds on the event-loop thread while the trainer samples on its own.
Memory is bounded: storage for ``capacity`` examples is allocated once, on the first ``add``.
"""

from __future__ import annotations

import threading

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float32]


class _Slots:
    """Preallocated storage for a fixed number of (window, target) pairs."""

    def __init__(self, size: int, window_shape: tuple[int, ...], target_shape: tuple[int, ...]):
        self.x: Array = np.empty((size, *window_shape), dtype=np.float32)
        self.y: Array = np.empty((size, *target_shape), dtype=np.float32)

    def put(self, slot: int, window: Array, target: Array) -> None:
        self.x[slot] = window
        self.y[slot] = target


class ReplayBuffer:
    """Bounded store of (window ``[T, F]``, target ``[H, F]``) examples for one model group.

    ``capacity`` counts every stored example including the holdout. The rest is split between
    the recent ring (``recent_capacity``, default half) and the older reservoir.
    """

    def __init__(
        self,
        capacity: int,
        recent_fraction: float,
        holdout_size: int,
        seed: int | None = None,
        *,
        recent_capacity: int | None = None,
    ) -> None:
        if holdout_size < 1:
            raise ValueError(f"holdout_size must be at least 1, got {holdout_size}")
        trainable = capacity - holdout_size
        if trainable < 2:
            raise ValueError(
                f"capacity ({capacity}) must exceed holdout_size ({holdout_size}) by at least 2"
            )
        if not 0.0 <= recent_fraction <= 1.0:
            raise ValueError(f"recent_fraction must be in [0, 1], got {recent_fraction}")
        recent = trainable // 2 if recent_capacity is None else recent_capacity
        if not 1 <= recent < trainable:
            raise ValueError(f"recent_capacity must be in [1, {trainable - 1}], got {recent}")
        self.capacity = capacity
        self.recent_fraction = recent_fraction
        self.holdout_size = holdout_size
        self.recent_capacity = recent
        self.older_capacity = trainable - recent
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self._holdout: _Slots | None = None
        self._recent: _Slots | None = None
        self._older: _Slots | None = None
        # Ring positions: the next slot to write; counts: slots in use.
        self._holdout_next = 0
        self._holdout_count = 0
        self._recent_next = 0
        self._recent_count = 0
        self._older_count = 0
        self._older_seen = 0  # examples that ever left the recent ring (reservoir denominator)
        self._added = 0
        self._dropped_nonfinite = 0

    # ---- writing --------------------------------------------------------------------------
    def add(self, window: NDArray[np.floating], target: NDArray[np.floating]) -> bool:
        """Store a copy of one example; False (and counted) if it holds NaN or Inf.

        A non-finite example is dropped rather than raised: one bad value must not stop the
        stream, and it must never reach the optimiser. A shape that differs from the first
        example is a programming error and raises ValueError.
        """
        w = np.asarray(window, dtype=np.float32)
        t = np.asarray(target, dtype=np.float32)
        if w.ndim != 2 or t.ndim != 2:
            raise ValueError(f"expected window [T, F] and target [H, F], got {w.shape}, {t.shape}")
        if not (np.isfinite(w).all() and np.isfinite(t).all()):
            with self._lock:
                self._dropped_nonfinite += 1
            return False
        with self._lock:
            if self._shapes is None:
                self._allocate(w.shape, t.shape)
            elif (w.shape, t.shape) != self._shapes:
                raise ValueError(
                    f"example shapes {w.shape}, {t.shape} differ from the buffer's {self._shapes}"
                )
            self._push(w, t)
            self._added += 1
        return True

    def _allocate(self, window_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> None:
        self._shapes = (window_shape, target_shape)
        self._holdout = _Slots(self.holdout_size, window_shape, target_shape)
        self._recent = _Slots(self.recent_capacity, window_shape, target_shape)
        self._older = _Slots(self.older_capacity, window_shape, target_shape)

    def _push(self, w: Array, t: Array) -> None:
        holdout, recent = self._holdout, self._recent
        assert holdout is not None and recent is not None
        slot = self._holdout_next
        if self._holdout_count == self.holdout_size:
            # The oldest holdout example graduates to the recent ring before being overwritten.
            self._push_recent(holdout.x[slot], holdout.y[slot])
        else:
            self._holdout_count += 1
        holdout.put(slot, w, t)
        self._holdout_next = (slot + 1) % self.holdout_size

    def _push_recent(self, w: Array, t: Array) -> None:
        recent = self._recent
        assert recent is not None
        slot = self._recent_next
        if self._recent_count == self.recent_capacity:
            self._push_older(recent.x[slot], recent.y[slot])
        else:
            self._recent_count += 1
        recent.put(slot, w, t)
        self._recent_next = (slot + 1) % self.recent_capacity

    def _push_older(self, w: Array, t: Array) -> None:
        """Reservoir sampling (Algorithm R): every example that ever aged out of the recent
        ring has the same chance of being in the reservoir, however long the stream runs."""
        older = self._older
        assert older is not None
        self._older_seen += 1
        if self._older_count < self.older_capacity:
            older.put(self._older_count, w, t)
            self._older_count += 1
            return
        slot = int(self._rng.integers(0, self._older_seen))
        if slot < self.older_capacity:
            older.put(slot, w, t)

    # ---- reading --------------------------------------------------------------------------
    def sample(self, batch: int) -> tuple[Array, Array]:
        """A training batch ``(X [B, T, F], Y [B, H, F])``, drawn with replacement.

        Each row comes from the recent ring with probability ``recent_fraction`` and from the
        older reservoir otherwise (all from one region while the other is empty). Holdout
        examples are never drawn.
        """
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        with self._lock:
            if self._recent_count == 0:
                raise ValueError("the replay buffer has no training examples yet")
            recent, older = self._recent, self._older
            assert recent is not None and older is not None
            if self._older_count == 0:
                n_recent = batch
            else:
                n_recent = int(self._rng.binomial(batch, self.recent_fraction))
            i_recent = self._rng.integers(0, self._recent_count, size=n_recent)
            i_older = self._rng.integers(0, max(self._older_count, 1), size=batch - n_recent)
            x = np.concatenate([recent.x[i_recent], older.x[i_older]])
            y = np.concatenate([recent.y[i_recent], older.y[i_older]])
        order = self._rng.permutation(batch)
        return x[order], y[order]

    def holdout(self) -> tuple[Array, Array]:
        """Copies of the newest ``holdout_size`` examples (fewer early on), oldest first."""
        with self._lock:
            holdout = self._holdout
            if holdout is None:
                raise ValueError("the replay buffer is empty")
            if self._holdout_count < self.holdout_size:
                order = np.arange(self._holdout_count)
            else:
                order = (np.arange(self.holdout_size) + self._holdout_next) % self.holdout_size
            return holdout.x[order].copy(), holdout.y[order].copy()

    # ---- counts ---------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return self._holdout_count + self._recent_count + self._older_count

    @property
    def trainable(self) -> int:
        """Examples that training may draw (recent ring + older reservoir)."""
        with self._lock:
            return self._recent_count + self._older_count

    @property
    def holdout_count(self) -> int:
        with self._lock:
            return self._holdout_count

    @property
    def added(self) -> int:
        """Examples ever accepted; the trainer compares it to decide a round is due."""
        with self._lock:
            return self._added

    @property
    def dropped_nonfinite(self) -> int:
        with self._lock:
            return self._dropped_nonfinite
