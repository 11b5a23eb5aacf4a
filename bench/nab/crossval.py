"""Held-out NAB figures by cross-validation over files: what a choice made on some series scores
on others.

NAB's own figure picks the threshold on the very files it scores (in-sample). Here the files are
split into ``k`` folds (sorted by name, file ``i`` in fold ``i mod k``: every category spread
over the folds); for each fold, the *choice* — which detector (a fusion rule, a configuration)
and which threshold — is made on the other folds only, by NAB's own objective (summed raw score,
threshold swept as NAB does), and the fold's files are scored with it. The held-out figure
normalises the pooled raw score of all folds: ``100 * (raw - null) / (perfect - null)``.

    python -m vigil.bench.nab.crossval --results DIR --labels FILE [--folds 3] \\
        DETECTOR [DETECTOR ...]

prints, per profile, the in-sample score of each detector and the held-out score of choosing
among all of them (and of each alone), as text and as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vigil.bench.nab.corpus import Windows, read_results_corpus, read_windows
from vigil.bench.nab.evaluation import ScoredFile, score_corpus
from vigil.bench.nab.scoring import NAB_PROFILES, CostMatrix, normalised_score

__all__ = ["HeldOut", "cross_validate", "folds_of", "main"]


@dataclass(frozen=True)
class HeldOut:
    """A held-out score and what was chosen for each fold."""

    score: float
    choices: list[tuple[str, float]]  # per fold: (detector, threshold)


def folds_of(names: Sequence[str], k: int) -> dict[str, int]:
    """File ``i`` (by sorted name) goes to fold ``i mod k``."""
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    return {name: i % k for i, name in enumerate(sorted(names))}


def cross_validate(
    candidates: Mapping[str, Sequence[ScoredFile]],
    windows: Windows,
    cost: CostMatrix,
    k: int = 3,
) -> HeldOut:
    """Choose a candidate and threshold on k-1 folds, score the k-th; pool the raw scores."""
    names = [f.relative_path for f in next(iter(candidates.values()))]
    for name, files in candidates.items():
        if sorted(f.relative_path for f in files) != sorted(names):
            raise ValueError(f"{name}: not the same files as the other candidates")
    fold = folds_of(names, k)
    profile = {"p": cost}
    raw = null = perfect = 0.0
    choices = []
    for held in range(k):
        best: tuple[float, str, float] | None = None
        for name, files in candidates.items():
            train = [f for f in files if fold[f.relative_path] != held]
            result = score_corpus(train, windows, profile)["p"]
            if best is None or result.raw > best[0]:
                best = (result.raw, name, result.threshold)
        assert best is not None
        _, name, threshold = best
        test = [f for f in candidates[name] if fold[f.relative_path] == held]
        result = score_corpus(test, windows, profile, {"p": threshold})["p"]
        raw, null, perfect = raw + result.raw, null + result.null, perfect + result.perfect
        choices.append((name, threshold))
    return HeldOut(normalised_score(raw, null, perfect), choices)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vigil.bench.nab.crossval")
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("detectors", nargs="+")
    args = parser.parse_args(argv)
    windows = read_windows(args.labels)
    corpora = {
        name: [
            ScoredFile(r.relative_path, r.timestamps, r.anomaly_scores)
            for r in read_results_corpus(args.results, name)
        ]
        for name in args.detectors
    }
    payload: dict[str, dict[str, object]] = {}
    for profile, cost in NAB_PROFILES.items():
        entry: dict[str, object] = {}
        for name, files in corpora.items():
            in_sample = score_corpus(files, windows, {profile: cost})[profile].normalised
            alone = cross_validate({name: files}, windows, cost, args.folds)
            entry[name] = {"in_sample": round(in_sample, 2), "held_out": round(alone.score, 2)}
            line = f"in-sample {in_sample:6.2f}  held-out {alone.score:6.2f}"
            print(f"{profile:20s} {name:32s} {line}", file=sys.stderr)
        if len(corpora) > 1:
            chosen = cross_validate(corpora, windows, cost, args.folds)
            entry["chosen_per_fold"] = {
                "held_out": round(chosen.score, 2),
                "choices": [[n, t] for n, t in chosen.choices],
            }
            picks = ", ".join(n for n, _ in chosen.choices)
            print(f"{profile:20s} {'(choose among them)':32s} held-out {chosen.score:6.2f}  "
                  f"chosen: {picks}", file=sys.stderr)  # fmt: skip
        payload[profile] = entry
    print(json.dumps({"folds": args.folds, "profiles": payload}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
