"""Corpus-wide threshold optimisation, as NAB's sweeper does it.

NAB picks ONE threshold per (detector, profile) for the whole corpus: the one that maximises
the summed raw score of all files.  Every distinct anomaly score is a candidate, and lowering
the threshold past a score only ever adds detections, so the whole score-versus-threshold curve
is built in one pass over the rows sorted by anomaly score (highest first):

* a detection outside a window adds its FP weight;
* inside a window it can only raise the window's value from ``-fnWeight`` to the reward of the
  earliest detection so far, so it adds the increase (zero when an earlier row already fired).

The objective is exactly :func:`vigil.bench.nab.scoring.score_file` summed over files; ties go to
the highest threshold, as NAB's stable sort does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vigil.bench.nab.scoring import CostMatrix, FileLayout, detection_weights

__all__ = ["NO_DETECTION", "ThresholdCurve", "threshold_curve"]

# NAB's sweeper starts from 1.1, above any anomaly score in [0, 1]: nothing is detected.
NO_DETECTION = 1.1


@dataclass(frozen=True)
class ThresholdCurve:
    """Corpus raw score and row counts at each candidate threshold (highest threshold first)."""

    thresholds: npt.NDArray[np.float64]
    scores: npt.NDArray[np.float64]
    tp: npt.NDArray[np.int64]
    tn: npt.NDArray[np.int64]
    fp: npt.NDArray[np.int64]
    fn: npt.NDArray[np.int64]

    def best(self) -> tuple[float, float]:
        """``(threshold, raw score)`` maximising the score; the highest threshold on ties."""
        i = int(np.argmax(self.scores))
        return float(self.thresholds[i]), float(self.scores[i])

    def at(self, threshold: float) -> float:
        """Raw score with detections ``anomaly_score >= threshold``."""
        # thresholds descend; the last candidate still >= threshold is the one in force
        i = int(np.searchsorted(-self.thresholds, -threshold, side="right")) - 1
        return float(self.scores[max(i, 0)])


def threshold_curve(
    files: Sequence[tuple[FileLayout, npt.ArrayLike]], cost: CostMatrix
) -> ThresholdCurve:
    """Score every candidate threshold at once over ``(layout, anomaly_scores)`` pairs."""
    event_scores: list[npt.NDArray[np.float64]] = []
    event_gains: list[npt.NDArray[np.float64]] = []
    event_inside: list[npt.NDArray[np.bool_]] = []
    n_windows = 0
    n_inside = 0
    n_outside = 0
    for layout, raw_scores in files:
        scores = np.asarray(raw_scores, dtype=np.float64)
        if scores.shape != (layout.n_rows,):
            raise ValueError(f"expected {layout.n_rows} anomaly scores, got shape {scores.shape}")
        weights = detection_weights(layout, cost)
        rows = np.arange(layout.probation, layout.n_rows)
        rows = rows[~np.isnan(scores[rows])]
        inside = layout.window_of_row[rows] >= 0
        n_windows += len(layout.spans)
        n_inside += int(np.count_nonzero(layout.labels[layout.probation :]))
        n_outside += int(np.count_nonzero(~layout.labels[layout.probation :]))

        gains = weights[rows].copy()
        window_rows = rows[inside]
        if window_rows.size:
            gains[inside] = _window_gains(
                window_rows, layout.window_of_row[window_rows], scores, weights, cost
            )
        event_scores.append(scores[rows])
        event_gains.append(gains)
        event_inside.append(inside)

    all_scores = np.concatenate(event_scores) if event_scores else np.empty(0)
    all_gains = np.concatenate(event_gains) if event_gains else np.empty(0)
    all_inside = np.concatenate(event_inside) if event_inside else np.empty(0, dtype=bool)
    order = np.argsort(-all_scores, kind="stable")
    sorted_scores = all_scores[order]
    cumulative = np.cumsum(all_gains[order])
    tp_cumulative = np.cumsum(all_inside[order])
    fp_cumulative = np.cumsum(~all_inside[order])
    # the state after the last row of each distinct score is that threshold's outcome
    is_last = np.ones(sorted_scores.size, dtype=bool)
    is_last[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    start = -cost.fn_weight * n_windows
    top = (
        max(NO_DETECTION, float(np.nextafter(sorted_scores[0], np.inf))) if all_scores.size else 1.1
    )
    thresholds = np.concatenate([[top], sorted_scores[is_last]])
    tp = np.concatenate([[0], tp_cumulative[is_last]]).astype(np.int64)
    fp = np.concatenate([[0], fp_cumulative[is_last]]).astype(np.int64)
    return ThresholdCurve(
        thresholds=thresholds,
        scores=np.concatenate([[start], start + cumulative[is_last]]),
        tp=tp,
        tn=n_outside - fp,
        fp=fp,
        fn=n_inside - tp,
    )


def _window_gains(
    rows: npt.NDArray[np.int64],
    window_ids: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float64],
    weights: npt.NDArray[np.float64],
    cost: CostMatrix,
) -> npt.NDArray[np.float64]:
    """Per in-window row: how much the window's value rises when this row starts detecting.

    The window's value is the reward of its earliest detected row (rewards fall with position),
    so walking its rows by descending score it is a running minimum of the row index.
    """
    n_ids = int(window_ids.max()) + 1
    by_score = np.lexsort((-scores[rows], window_ids))  # group by window, highest score first
    grouped_rows = rows[by_score]
    grouped_ids = window_ids[by_score]
    # running min of the row index restarted per window: later windows get smaller offsets
    span = int(rows.max()) + 1
    keyed = grouped_rows + (n_ids - grouped_ids) * span
    earliest = np.minimum.accumulate(keyed) - (n_ids - grouped_ids) * span
    value = weights[earliest]
    previous = np.empty_like(value)
    previous[1:] = value[:-1]
    group_start = np.ones(value.size, dtype=bool)
    group_start[1:] = grouped_ids[1:] != grouped_ids[:-1]
    previous[group_start] = -cost.fn_weight
    gains = np.empty_like(value)
    gains[by_score] = value - previous
    return gains
