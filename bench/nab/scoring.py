"""NAB's scoring rule for one data file, written to reproduce NAB's published figures exactly.

The rule (Lavin & Ahmad 2015, NAB v1.x ``scorer.py``/``sweeper.py``):

* the first ``min(floor(0.15 * n), 0.15 * 5000)`` rows are a probation period: nothing there counts;
* each labelled anomaly window is rewarded once, for its FIRST detection, by a scaled sigmoid of
  how early in the window that detection came (``+tpWeight`` at the left edge, falling towards 0
  at the right edge); a window with no detection costs ``-fnWeight``;
* every detection outside a window costs ``fpWeight`` scaled by a sigmoid of its distance past the
  preceding window (a detection just after a window costs almost nothing, one far after costs
  the full ``fpWeight``; one before any window costs exactly ``fpWeight``).

The arithmetic follows NAB's own order of operations (``math.exp``, products then quotients, the
file score summed as TPs + FPs + FNs, each left to right), so the per-row ``S(t)`` columns and the
per-file scores match NAB's CSVs to the last printed digit.  This module is pure: arrays in,
numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import numpy.typing as npt

__all__ = [
    "NAB_PROFILES",
    "PROBATION_PERCENT",
    "CostMatrix",
    "FileLayout",
    "FileScore",
    "WindowSpan",
    "detection_weights",
    "layout_file",
    "normalised_score",
    "null_score",
    "perfect_score",
    "probation_length",
    "scaled_sigmoid",
    "score_file",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

PROBATION_PERCENT = 0.15
# NAB caps the probation period at 15% of 5000 rows, whatever the file length.
_PROBATION_CAP_ROWS = 5000


@dataclass(frozen=True)
class CostMatrix:
    """One NAB application profile: how much a TP, FP and FN weigh."""

    tp_weight: float
    fp_weight: float
    fn_weight: float
    tn_weight: float = 1.0

    @classmethod
    def from_nab(cls, cost_matrix: Mapping[str, Any]) -> Self:
        """Read NAB's ``{"tpWeight": .., "fpWeight": .., "fnWeight": .., "tnWeight": ..}``."""
        try:
            return cls(
                tp_weight=float(cost_matrix["tpWeight"]),
                fp_weight=float(cost_matrix["fpWeight"]),
                fn_weight=float(cost_matrix["fnWeight"]),
                tn_weight=float(cost_matrix.get("tnWeight", 1.0)),
            )
        except KeyError as exc:
            raise ValueError(f"cost matrix lacks {exc.args[0]!r}: {dict(cost_matrix)}") from None


# NAB's config/profiles.json, so the scorer works without a NAB checkout.
NAB_PROFILES: dict[str, CostMatrix] = {
    "standard": CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    "reward_low_FP_rate": CostMatrix(tp_weight=1.0, fp_weight=0.22, fn_weight=1.0),
    "reward_low_FN_rate": CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=2.0),
}


def probation_length(n_rows: int, percent: float = PROBATION_PERCENT) -> int:
    """Number of leading rows that are never scored (NAB: rows with index < min(...))."""
    limit = min(math.floor(percent * n_rows), percent * _PROBATION_CAP_ROWS)
    return math.ceil(limit)


def scaled_sigmoid(position: float) -> float:
    """NAB's reward curve: +0.987 at relative position -1, 0 at 0, -1 beyond 3.

    Written with ``math.exp`` in NAB's order of operations so the results are bit-identical.
    """
    if position > 3.0:
        return -1.0
    return 2.0 * (1.0 / (1.0 + math.exp(5.0 * position))) - 1.0


_MAX_TP = scaled_sigmoid(-1.0)


@dataclass(frozen=True)
class WindowSpan:
    """An anomaly window as an inclusive range of row indices."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class FileLayout:
    """Everything about one file that does not depend on the detector: rows, windows, probation.

    ``window_of_row[i]`` is the index into ``spans`` of the window containing row ``i`` (-1 when
    outside every window); ``curve[i]`` is NAB's scaled sigmoid at row ``i``'s relative position
    (inside a window: how early; outside: how far past the preceding window, -1 before any).
    """

    n_rows: int
    probation: int
    spans: tuple[WindowSpan, ...]
    window_of_row: IntArray
    curve: FloatArray

    @property
    def labels(self) -> npt.NDArray[np.bool_]:
        """NAB's per-row label: inside an anomaly window."""
        return self.window_of_row >= 0


def layout_file(
    timestamps: npt.NDArray[np.datetime64],
    windows: Sequence[tuple[np.datetime64, np.datetime64]],
    probation_percent: float = PROBATION_PERCENT,
) -> FileLayout:
    """Map windows given by timestamps onto row indices (a row is in ``[start, end]`` inclusive)."""
    n_rows = len(timestamps)
    if n_rows > 1 and not bool(np.all(timestamps[1:] > timestamps[:-1])):
        # duplicated or out-of-order timestamps: match windows row by row, as NAB's sweeper does
        return _layout_in_file_order(timestamps, windows, probation_percent)
    spans: list[WindowSpan] = []
    for start, end in sorted(windows, key=lambda w: w[0]):
        if end < start:
            raise ValueError(f"anomaly window ends before it starts: [{start}, {end}]")
        first = int(np.searchsorted(timestamps, start, side="left"))
        last = int(np.searchsorted(timestamps, end, side="right")) - 1
        if last < first:
            raise ValueError(f"anomaly window [{start}, {end}] contains no row of the file")
        if spans and first <= spans[-1].last:
            raise ValueError(f"anomaly window [{start}, {end}] overlaps the previous window")
        spans.append(WindowSpan(first, last))
    window_of_row = np.full(n_rows, -1, dtype=np.int64)
    for k, span in enumerate(spans):
        window_of_row[span.first : span.last + 1] = k
    return FileLayout(
        n_rows=n_rows,
        probation=probation_length(n_rows, probation_percent),
        spans=tuple(spans),
        window_of_row=window_of_row,
        curve=_curve(n_rows, spans, window_of_row),
    )


def _layout_in_file_order(
    timestamps: npt.NDArray[np.datetime64],
    windows: Sequence[tuple[np.datetime64, np.datetime64]],
    probation_percent: float,
) -> FileLayout:
    """NAB's ``Sweeper.calcSweepScore`` window matching, for files whose timestamps repeat or go
    backwards: rows are walked in file order; the next window (by start) is entered at the first
    row whose timestamp EQUALS its start and left after the first later row whose timestamp
    equals its end. Its right index and width come from the FIRST occurrence of each limit in
    the file (``timestamps.index``): inside, a row's position is ``-(right - i + 1) / width``;
    after it, ``|exit_row - i| / (width - 1)``; before any window, the full FP cost.

    NAB silently never enters a window whose start is not a row's timestamp (and then no later
    window either) and crashes on an end that is not one; here both are a clear error. A start
    met while still inside the previous window enters the new window, as in NAB.
    """
    n_rows = len(timestamps)
    stamps = timestamps.astype("datetime64[us]").astype(np.int64).tolist()
    first_row: dict[int, int] = {}
    for i, ts in enumerate(stamps):
        first_row.setdefault(ts, i)
    pending: list[tuple[int, int]] = []  # (start, end) in microseconds
    for start, end in sorted(windows, key=lambda w: w[0]):
        if end < start:
            raise ValueError(f"anomaly window ends before it starts: [{start}, {end}]")
        micros = np.array([start, end], dtype="datetime64[us]").astype(np.int64).tolist()
        limits = (int(micros[0]), int(micros[1]))
        for name, limit in zip(("start", "end"), limits, strict=True):
            if limit not in first_row:
                raise ValueError(
                    f"anomaly window [{start}, {end}]: its {name} is no row's timestamp; a file"
                    " with repeated or out-of-order timestamps is matched as NAB does, by exact"
                    " timestamps"
                )
        pending.append(limits)
    window_of_row = np.full(n_rows, -1, dtype=np.int64)
    positions = np.full(n_rows, np.inf)
    spans: list[WindowSpan] = []
    current: tuple[int, int, float] | None = None  # (end timestamp, right index, width)
    previous: tuple[int, float] | None = None  # (exit row, width)
    entered_at = 0
    for i, ts in enumerate(stamps):
        if pending and ts == pending[0][0]:
            if current is not None:  # NAB enters the next window even from inside one
                spans.append(WindowSpan(entered_at, i - 1))
            start_us, end_us = pending.pop(0)
            right = first_row[end_us]
            current = (end_us, right, float(right - first_row[start_us] + 1))
            entered_at = i
        if current is not None:
            window_of_row[i] = len(spans)
            positions[i] = -(current[1] - i + 1) / current[2]
        elif previous is not None:
            # a one-row window: NAB divides by zero; position 2.0 as NAB's first version
            width = previous[1] - 1
            positions[i] = abs(previous[0] - i) / width if width != 0 else 2.0
        if current is not None and ts == current[0]:
            previous = (i, current[2])
            spans.append(WindowSpan(entered_at, i))
            current = None
    if current is not None:  # the file ended inside a window
        spans.append(WindowSpan(entered_at, n_rows - 1))
    if pending:
        missed = ", ".join(f"[{np.datetime64(s, 'us')}, {np.datetime64(e, 'us')}]"
                           for s, e in pending)  # fmt: skip
        raise ValueError(
            f"anomaly window(s) {missed} never entered: in file order, no row with the start"
            " timestamp comes after the previous window's start"
        )
    curve = np.fromiter((scaled_sigmoid(float(x)) for x in positions), np.float64, n_rows)
    return FileLayout(
        n_rows=n_rows,
        probation=probation_length(n_rows, probation_percent),
        spans=tuple(spans),
        window_of_row=window_of_row,
        curve=curve,
    )


def _curve(n_rows: int, spans: Sequence[WindowSpan], window_of_row: IntArray) -> FloatArray:
    rows = np.arange(n_rows, dtype=np.int64)
    positions = np.full(n_rows, np.inf)  # +inf: before any window, the full FP cost
    if spans:
        firsts = np.array([s.first for s in spans], dtype=np.int64)
        lasts = np.array([s.last for s in spans], dtype=np.int64)
        lengths = lasts - firsts + 1
        inside = window_of_row >= 0
        k = window_of_row[inside]
        # -(last - i + 1) / length: -1 at the left edge, just below 0 at the right edge
        positions[inside] = -(lasts[k] - rows[inside] + 1) / lengths[k].astype(np.float64)
        preceding = np.searchsorted(lasts, rows, side="left") - 1
        after = ~inside & (preceding >= 0)
        p = preceding[after]
        # NAB divides by (length - 1); a one-row window would divide by zero there, and NAB's
        # first version used a position of 2.0 instead, which we keep.
        wide = lengths[p] > 1
        distance = np.abs(lasts[p] - rows[after]).astype(np.float64)
        span_width = np.where(wide, lengths[p] - 1, 1).astype(np.float64)
        positions[after] = np.where(wide, distance / span_width, 2.0)
    # math.exp row by row (not np.exp) so every value is bit-identical to NAB's.
    return np.fromiter((scaled_sigmoid(float(x)) for x in positions), np.float64, n_rows)


def detection_weights(layout: FileLayout, cost: CostMatrix) -> FloatArray:
    """What a detection at each row is worth on its own (NAB's "sweep score").

    Inside a window: the TP reward for a detection at that position (only the first detection of
    a window is ever paid).  Outside: the (negative) FP cost, scaled by the distance past the
    closest preceding window.
    """
    return np.where(
        layout.labels,
        layout.curve * cost.tp_weight / _MAX_TP,
        layout.curve * cost.fp_weight,
    )


@dataclass(frozen=True)
class FileScore:
    """NAB's figures for one file at one threshold, plus its per-row ``S(t)`` column."""

    score: float
    tp: int
    tn: int
    fp: int
    fn: int
    total: int
    row_scores: FloatArray


def _sum_in_order(values: Sequence[float]) -> float:
    """Left-to-right sum, as NAB's loop accumulates (np.sum would sum pairwise)."""
    return float(np.cumsum(np.asarray(values, dtype=np.float64))[-1]) if values else 0.0


def score_file(
    layout: FileLayout,
    anomaly_scores: npt.ArrayLike,
    threshold: float,
    cost: CostMatrix,
    weights: FloatArray | None = None,
) -> FileScore:
    """Score one file: detections are rows with ``anomaly_score >= threshold`` after probation.

    ``weights`` may be passed in when the same file is scored at many thresholds.
    """
    scores = np.asarray(anomaly_scores, dtype=np.float64)
    if scores.shape != (layout.n_rows,):
        raise ValueError(f"expected {layout.n_rows} anomaly scores, got shape {scores.shape}")
    if weights is None:
        weights = detection_weights(layout, cost)
    rows = np.arange(layout.n_rows)
    scorable = rows >= layout.probation
    detected = (scores >= threshold) & scorable  # NaN never detects
    labels = layout.labels
    tp = int(np.count_nonzero(detected & labels))
    fp = int(np.count_nonzero(detected & ~labels))
    tn = int(np.count_nonzero(scorable & ~detected & ~labels))
    fn = int(np.count_nonzero(scorable & ~detected & labels))

    row_scores = np.zeros(layout.n_rows, dtype=np.float64)
    tp_values: list[float] = []
    fn_values: list[float] = []
    for span in layout.spans:
        hits = np.flatnonzero(detected[span.first : span.last + 1])
        if hits.size:
            value = float(weights[span.first + int(hits[0])])
            tp_values.append(value)
        else:
            value = -cost.fn_weight
            fn_values.append(value)
        row_scores[span.first] = value  # NAB marks each window's outcome on its first row
    false_positives = np.flatnonzero(detected & ~labels)
    row_scores[false_positives] = weights[false_positives]
    fp_values = [float(v) for v in weights[false_positives]]
    total = _sum_in_order(tp_values) + _sum_in_order(fp_values) + _sum_in_order(fn_values)
    return FileScore(
        score=total,
        tp=tp,
        tn=tn,
        fp=fp,
        fn=fn,
        total=layout.n_rows,
        row_scores=row_scores,
    )


def null_score(n_windows: int, cost: CostMatrix) -> float:
    """Raw score of a detector that never fires: every window is missed."""
    return -cost.fn_weight * n_windows


def perfect_score(n_windows: int, cost: CostMatrix) -> float:
    """Raw score of a detector that fires exactly at the start of every window, and nowhere else."""
    return cost.tp_weight * n_windows


def normalised_score(raw: float, null: float, perfect: float) -> float:
    """NAB's reported figure: 0 for the null detector, 100 for the perfect one."""
    if perfect == null:
        return math.nan
    return 100.0 * (raw - null) / (perfect - null)
