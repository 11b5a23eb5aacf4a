"""A detector's NAB result for a set of files: per profile, a threshold, per-file scores, and the
normalised corpus score ``100 * (raw - null) / (perfect - null)``.

The threshold is either given (NAB's ``thresholds.json``) or optimised over exactly the files
scored, as NAB's sweeper does; null and perfect are also computed over those files, so a subset
of NAB gets a figure comparable in kind (not in value) to NAB's 58-file scoreboard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from vigil.bench.nab.corpus import Windows
from vigil.bench.nab.scoring import (
    PROBATION_PERCENT,
    CostMatrix,
    FileLayout,
    FileScore,
    layout_file,
    normalised_score,
    null_score,
    perfect_score,
    score_file,
)
from vigil.bench.nab.sweep import threshold_curve

__all__ = ["ProfileResult", "ScoredFile", "layouts_for", "score_corpus"]


@dataclass(frozen=True)
class ScoredFile:
    """A detector's anomaly scores for one data file (``relative_path`` as in the labels)."""

    relative_path: str
    timestamps: npt.NDArray[np.datetime64]
    anomaly_scores: npt.NDArray[np.float64]


@dataclass(frozen=True)
class ProfileResult:
    """The outcome for one application profile."""

    profile: str
    threshold: float
    optimised: bool
    raw: float
    null: float
    perfect: float
    normalised: float
    files: dict[str, FileScore] = field(repr=False)

    def counts(self) -> dict[str, int]:
        return {
            key: sum(getattr(f, key) for f in self.files.values())
            for key in ("tp", "tn", "fp", "fn")
        }

    def summary(self) -> dict[str, Any]:
        return {
            "score": round(self.normalised, 4),
            "threshold": self.threshold,
            "optimised": self.optimised,
            "raw": round(self.raw, 6),
            "null": self.null,
            "perfect": self.perfect,
            **self.counts(),
        }


def layouts_for(
    files: Sequence[ScoredFile], windows: Windows, probation_percent: float = PROBATION_PERCENT
) -> dict[str, FileLayout]:
    """Lay out each file's windows; a file the labels do not know is an error, not a skip."""
    missing = [f.relative_path for f in files if f.relative_path not in windows]
    if missing:
        raise ValueError(f"no label windows for {len(missing)} file(s): {', '.join(missing[:5])}")
    return {
        f.relative_path: layout_file(f.timestamps, windows[f.relative_path], probation_percent)
        for f in files
    }


def score_corpus(
    files: Sequence[ScoredFile],
    windows: Windows,
    profiles: Mapping[str, CostMatrix],
    thresholds: Mapping[str, float] | None = None,
    probation_percent: float = PROBATION_PERCENT,
) -> dict[str, ProfileResult]:
    """Score ``files`` under every profile, at the given thresholds or at optimised ones."""
    if not files:
        raise ValueError("no files to score")
    layouts = layouts_for(files, windows, probation_percent)
    n_windows = sum(len(layout.spans) for layout in layouts.values())
    results = {}
    for name, cost in profiles.items():
        if thresholds is not None:
            if name not in thresholds:
                raise ValueError(f"no threshold for profile {name!r}")
            threshold, optimised = float(thresholds[name]), False
        else:
            curve = threshold_curve(
                [(layouts[f.relative_path], f.anomaly_scores) for f in files], cost
            )
            threshold, optimised = curve.best()[0], True
        per_file = {
            f.relative_path: score_file(layouts[f.relative_path], f.anomaly_scores, threshold, cost)
            for f in files
        }
        raw = float(sum(s.score for s in per_file.values()))
        null = null_score(n_windows, cost)
        perfect = perfect_score(n_windows, cost)
        results[name] = ProfileResult(
            profile=name,
            threshold=threshold,
            optimised=optimised,
            raw=raw,
            null=null,
            perfect=perfect,
            normalised=normalised_score(raw, null, perfect),
            files=per_file,
        )
    return results
