"""`vigil eval anomalies`: detectors against per-row labels, on univariate or multivariate CSVs.

Each file is one series (one key): a timestamp column, one or several value columns and a 0/1
label column. Every detector sees the same rows in file order, scores each before it learns it,
and the first ``warmup`` rows are never scored (they are the known-normal start that the reference
detectors learn from; the others learn from them too). Detectors:

* ``vigil``: the stream's own code (:class:`~bench.replay_harness.ReplayHarness`), the group of
  :func:`anomaly_group` (or ``--group-config``), reference mode off;
* ``vigil-reference``: the same with ``detector.reference`` on, its reference being the warm-up
  rows (``mode: first_events``, ``events: warmup``);
* ``zscore``: max over channels of ``|x - mean| / std``, mean and std of the warm-up rows;
* ``xstream``, ``rshash``, ``loda``: pysad's streaming detectors (score, then learn, row by row,
  on values standardised by the warm-up's mean and std).

Figures per detector, pooled over the files (row counts summed): precision, recall, F1,
false-alarm rate (FP / normal rows), missed-alarm rate (FN / anomalous rows) and a NAB-style score
(each contiguous labelled run is a window, NAB's standard profile, normalised so that never
firing scores 0 and firing once at the start of every window 100), at

* **flag**: the detector's own decision: Vigil's published incident flag (``Prediction.anomaly``);
  ``zscore`` ``>= 3``; a pysad detector's score above the 99th percentile of its scores on the
  second half of the warm-up;
* **best**: the one threshold on the score that maximises the pooled F1 over the files given
  (in-sample: an upper bound);
* **held-out**: files in ``folds`` folds by name (file ``i`` in fold ``i mod folds``); each fold is
  scored at the threshold that maximises F1 on the other folds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vigil.bench.nab.scoring import NAB_PROFILES, FileLayout, score_file

__all__ = [
    "DETECTORS",
    "Counts",
    "DetectorRun",
    "LabelledSeries",
    "anomaly_group",
    "best_threshold",
    "evaluate",
    "labelled_files",
    "read_labelled",
    "run_detector",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
DETECTORS = ("vigil", "vigil-reference", "zscore", "xstream", "rshash", "loda")
ZSCORE_FLAG = 3.0
PYSAD_FLAG_QUANTILE = 0.99
MAX_CANDIDATES = 512  # thresholds tried by the best-F1 sweep (quantiles of the pooled scores)


@dataclass(frozen=True)
class LabelledSeries:
    name: str
    timestamps: FloatArray  # epoch seconds
    values: FloatArray  # [N, C]; NaN = missing
    labels: BoolArray  # [N]
    channels: tuple[str, ...]


@dataclass(frozen=True)
class DetectorRun:
    scores: FloatArray  # [N], higher = more anomalous
    flags: BoolArray  # [N], the detector's own decision


@dataclass(frozen=True)
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    @classmethod
    def of(cls, flags: BoolArray, labels: BoolArray) -> Counts:
        return cls(
            tp=int(np.count_nonzero(flags & labels)),
            fp=int(np.count_nonzero(flags & ~labels)),
            fn=int(np.count_nonzero(~flags & labels)),
            tn=int(np.count_nonzero(~flags & ~labels)),
        )

    def metrics(self) -> dict[str, float]:
        """Precision, recall, F1, FAR (FP / normal rows), MAR (FN / anomalous rows)."""
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        normal, anomalous = self.fp + self.tn, self.tp + self.fn
        return {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "far": self.fp / normal if normal else 0.0,
            "mar": self.fn / anomalous if anomalous else 0.0,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
        }


# ---- reading -----------------------------------------------------------------------------------
def labelled_files(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a directory stands for its ``*.csv`` files, sorted by name."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.csv"))
            if not found:
                raise ValueError(f"{path}: no .csv files")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    if not out:
        raise ValueError("no input files")
    return out


def read_labelled(
    path: Path,
    *,
    label_column: str = "is_anomaly",
    channels: Sequence[str] = (),
    timestamp_column: str = "timestamp",
    delimiter: str = ",",
) -> LabelledSeries:
    """One labelled series; ``channels`` empty = every column but the timestamp and the label."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, sep=delimiter)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc})") from None
    for column in (timestamp_column, label_column, *channels):
        if column not in frame.columns:
            raise ValueError(f"{path}: no column {column!r} (columns: {list(frame.columns)})")
    names = list(channels) or [
        str(c) for c in frame.columns if c not in (timestamp_column, label_column)
    ]
    if not names:
        raise ValueError(f"{path}: no value columns")
    if len(frame) == 0:
        raise ValueError(f"{path}: no rows")
    labels = pd.to_numeric(frame[label_column], errors="coerce")
    if labels.isna().any() or not labels.isin([0, 1]).all():
        raise ValueError(f"{path}: label column {label_column!r} must hold 0 or 1 on every row")
    try:
        values = frame[names].apply(pd.to_numeric, errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise ValueError(f"{path}: value columns {names} must be numeric") from None
    stamps = frame[timestamp_column]
    numeric = pd.to_numeric(stamps, errors="coerce")
    if numeric.notna().all():
        seconds = numeric.to_numpy(dtype=np.float64)
    else:
        try:
            parsed = pd.to_datetime(stamps, utc=True)
        except (ValueError, TypeError):
            raise ValueError(f"{path}: timestamps in {timestamp_column!r} do not parse") from None
        seconds = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(np.float64)
    return LabelledSeries(
        path.name, seconds, values, labels.to_numpy(dtype=bool), tuple(str(n) for n in names)
    )


# ---- detectors ---------------------------------------------------------------------------------
def anomaly_group(
    channels: Sequence[str], config: Mapping[str, Any] | None = None, reference: int | None = None
) -> Any:
    """The group Vigil runs with: ``config`` (a ``VIGIL_GROUPS`` item) or a small default, its
    channels the file's; with ``reference`` = N, reference mode on the first N events."""
    from vigil.settings import ModelGroup

    base: dict[str, Any] = (
        json.loads(json.dumps(config))
        if config
        else {
            "name": "anomalies",
            "model": {"window": 32, "hidden_size": 32, "num_layers": 1, "horizon": 1},
            "detector": {"short_window": 30, "long_window": 2000},
        }
    )
    base.setdefault("name", "anomalies")
    model = base.setdefault("model", {})
    model["input_size"] = len(channels)
    base["channels"] = [] if len(channels) == 1 else list(channels)
    detector = base.setdefault("detector", {})
    settings = detector.setdefault("reference", {})
    if reference is None:
        settings["mode"] = "off"
    else:
        settings["mode"] = "first_events"
        settings["events"] = reference
    return ModelGroup.model_validate(base)


def _vigil(
    series: LabelledSeries, warmup: int, seed: int, config: Mapping[str, Any] | None, on: bool
) -> DetectorRun:
    from vigil.bench.replay_harness import ReplayHarness

    group = anomaly_group(series.channels, config, warmup if on else None)
    values = series.values[:, 0] if series.values.shape[1] == 1 else series.values
    with ReplayHarness(group, seed=seed) as harness:
        result = harness.replay(series.timestamps, values)
    return DetectorRun(np.nan_to_num(result.scores, nan=0.0), result.anomaly.copy())


def _standardised(series: LabelledSeries, warmup: int) -> FloatArray:
    head = series.values[:warmup]
    mean = np.nanmean(head, axis=0)
    std = np.nanstd(head, axis=0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    z = (series.values - np.nan_to_num(mean)) / std
    return np.nan_to_num(z, nan=0.0)  # a missing value counts as the warm-up's mean


def _zscore(series: LabelledSeries, warmup: int, seed: int) -> DetectorRun:
    scores = np.abs(_standardised(series, warmup)).max(axis=1)
    return DetectorRun(scores, scores >= ZSCORE_FLAG)


def _pysad(name: str, series: LabelledSeries, warmup: int, seed: int) -> DetectorRun:
    from pysad.models import LODA, RSHash, xStream

    z = _standardised(series, warmup)
    head = z[:warmup]
    model: Any
    if name == "xstream":  # pysad's defaults are 100 chains of depth 15: 4x slower, no better
        model = xStream(num_components=50, n_chains=50, depth=10, random_state=seed)
    elif name == "rshash":
        model = RSHash(head.min(axis=0), head.max(axis=0), random_state=seed)
    else:
        model = LODA(random_state=seed)
    scores = np.zeros(len(z))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, row in enumerate(z):
            value = float(model.score_partial(row))
            scores[i] = value if math.isfinite(value) else 0.0
            model.fit_partial(row)
    limit = float(np.quantile(scores[warmup // 2 : warmup], PYSAD_FLAG_QUANTILE))
    return DetectorRun(scores, scores > limit)


def run_detector(
    name: str,
    series: LabelledSeries,
    warmup: int,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
) -> DetectorRun:
    """Run one detector over one series; scores and flags per row (warm-up rows included)."""
    if name in ("vigil", "vigil-reference"):
        return _vigil(series, warmup, seed, config, on=name == "vigil-reference")
    if name == "zscore":
        return _zscore(series, warmup, seed)
    if name in ("xstream", "rshash", "loda"):
        return _pysad(name, series, warmup, seed)
    raise ValueError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}")


# ---- scoring -----------------------------------------------------------------------------------
def _layout(labels: BoolArray) -> FileLayout:
    """Each contiguous labelled run is a NAB window; nothing on probation (the caller slices)."""
    from vigil.bench.nab.scoring import layout_file

    n = len(labels)
    stamps = np.arange(n).astype("datetime64[s]")
    edges = np.flatnonzero(np.diff(np.concatenate([[0], labels.astype(np.int8), [0]])))
    windows = [(stamps[a], stamps[b - 1]) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    return dataclasses.replace(layout_file(stamps, windows), probation=0)


def _nab(parts: Sequence[tuple[FloatArray, BoolArray]], threshold: float) -> float:
    """NAB-style normalised score (standard profile) pooled over the files."""
    cost = NAB_PROFILES["standard"]
    raw = 0.0
    windows = 0
    for scores, labels in parts:
        layout = _layout(labels)
        windows += len(layout.spans)
        raw += score_file(layout, scores, threshold, cost).score
    if windows == 0:
        return math.nan
    null = -cost.fn_weight * windows
    perfect = cost.tp_weight * windows
    return 100.0 * (raw - null) / (perfect - null)


def _figures(parts: Sequence[tuple[FloatArray, BoolArray]], threshold: float) -> dict[str, Any]:
    total = Counts()
    for scores, labels in parts:
        total = total + Counts.of(scores >= threshold, labels)
    return {**total.metrics(), "nab": _nab(parts, threshold), "threshold": threshold}


def best_threshold(parts: Sequence[tuple[FloatArray, BoolArray]]) -> float:
    """The score threshold with the highest pooled F1 (ties: the highest threshold)."""
    pooled = np.concatenate([s for s, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    candidates = np.unique(pooled)
    if len(candidates) > MAX_CANDIDATES:
        candidates = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, MAX_CANDIDATES)))
    order = np.argsort(pooled)
    ranked, ranked_labels = pooled[order], labels[order]
    positives_above = np.cumsum(ranked_labels[::-1])[::-1]  # labelled rows at or above each rank
    best, best_f1 = float(candidates[-1]), -1.0
    total_pos = int(labels.sum())
    for threshold in candidates:
        first = int(np.searchsorted(ranked, threshold, side="left"))
        flagged = len(ranked) - first
        tp = int(positives_above[first]) if first < len(ranked) else 0
        precision = tp / flagged if flagged else 0.0
        recall = tp / total_pos if total_pos else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if f1 >= best_f1:
            best, best_f1 = float(threshold), f1
    return best


def _detector_figures(
    runs: Sequence[tuple[DetectorRun, BoolArray]], warmup: int, folds: int
) -> dict[str, Any]:
    scored = [(run.scores[warmup:], labels[warmup:]) for run, labels in runs]
    flagged = [(run.flags[warmup:].astype(np.float64), labels[warmup:]) for run, labels in runs]
    own = _figures(flagged, 0.5)
    own["threshold"] = "flag"
    best = _figures(scored, best_threshold(scored))
    held = Counts()
    nab_parts: list[tuple[FloatArray, BoolArray]] = []
    thresholds = []
    if folds >= 2 and len(scored) >= folds:
        for fold in range(folds):
            train = [p for i, p in enumerate(scored) if i % folds != fold]
            test = [p for i, p in enumerate(scored) if i % folds == fold]
            threshold = best_threshold(train)
            thresholds.append(threshold)
            for scores, labels in test:
                held = held + Counts.of(scores >= threshold, labels)
                nab_parts.append(((scores >= threshold).astype(np.float64), labels))
        heldout: dict[str, Any] = {
            **held.metrics(),
            "nab": _nab(nab_parts, 0.5),
            "thresholds": thresholds,
        }
    else:
        heldout = {}
    return {"flag": own, "best": best, "heldout": heldout}


# ---- the whole evaluation ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Task:
    detector: str
    path: str
    label_column: str
    channels: tuple[str, ...]
    timestamp_column: str
    delimiter: str
    warmup: int
    seed: int
    config: dict[str, Any] | None


def _run_task(task: _Task) -> tuple[str, str, FloatArray, BoolArray, BoolArray]:
    series = read_labelled(
        Path(task.path),
        label_column=task.label_column,
        channels=task.channels,
        timestamp_column=task.timestamp_column,
        delimiter=task.delimiter,
    )
    run = run_detector(task.detector, series, task.warmup, task.seed, task.config)
    return task.detector, task.path, run.scores, run.flags, series.labels


def evaluate(
    files: Sequence[Path],
    *,
    detectors: Sequence[str] = DETECTORS,
    label_column: str = "is_anomaly",
    channels: Sequence[str] = (),
    timestamp_column: str = "timestamp",
    delimiter: str = ",",
    warmup: int = 1000,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
    folds: int = 2,
    workers: int = 1,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Run every detector over every file; pooled figures per detector (see the module doc)."""
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; known: {', '.join(DETECTORS)}")
    series = [
        read_labelled(
            f,
            label_column=label_column,
            channels=channels,
            timestamp_column=timestamp_column,
            delimiter=delimiter,
        )
        for f in files
    ]
    for s in series:
        if len(s.labels) <= warmup:
            raise ValueError(f"{s.name}: {len(s.labels)} rows, none left after {warmup} warm-up")
        if len(s.channels) != len(series[0].channels):
            raise ValueError(f"{s.name}: {len(s.channels)} channels, the first file has more/less")
    if config is not None:
        anomaly_group(series[0].channels, config, warmup)  # a bad group fails here, not in a worker
    tasks = [
        _Task(
            d,
            str(f),
            label_column,
            tuple(channels),
            timestamp_column,
            delimiter,
            warmup,
            seed,
            dict(config) if config else None,
        )
        for d in detectors
        for f in files
    ]
    results: dict[tuple[str, str], tuple[FloatArray, BoolArray, BoolArray]] = {}
    if workers <= 1:
        for task in tasks:
            detector, path, scores, flags, labels = _run_task(task)
            results[(detector, path)] = (scores, flags, labels)
            if progress:
                progress(1)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for detector, path, scores, flags, labels in pool.map(_run_task, tasks):
                results[(detector, path)] = (scores, flags, labels)
                if progress:
                    progress(1)
    report: dict[str, Any] = {}
    for detector in detectors:
        runs = []
        for f in files:
            scores, flags, labels = results[(detector, str(f))]
            runs.append((DetectorRun(scores, flags), labels))
        report[detector] = _detector_figures(runs, warmup, folds)
    scored_rows = sum(len(s.labels) - warmup for s in series)
    anomalous = sum(int(s.labels[warmup:].sum()) for s in series)
    return {
        "files": [str(f) for f in files],
        "rows_scored": scored_rows,
        "anomalous_rows": anomalous,
        "channels": list(series[0].channels),
        "warmup_rows": warmup,
        "folds": folds,
        "detectors": report,
    }


def summary_lines(outcome: Mapping[str, Any]) -> list[str]:
    """The human-readable table: one line per detector and threshold kind."""
    lines = [
        f"{len(outcome['files'])} file(s), {outcome['rows_scored']} rows scored"
        f" ({outcome['anomalous_rows']} anomalous) after {outcome['warmup_rows']} warm-up rows;"
        f" channels {','.join(outcome['channels'])}",
        f"  {'detector':16} {'at':9} {'P':>6} {'R':>6} {'F1':>6} {'FAR':>6} {'MAR':>6}"
        f" {'NAB':>7}  threshold",
    ]
    for name, figures in outcome["detectors"].items():
        for kind in ("flag", "best", "heldout"):
            f = figures.get(kind) or {}
            if not f:
                continue
            threshold = f.get("threshold", "")
            if kind == "heldout":
                threshold = "per fold: " + ", ".join(f"{t:.6g}" for t in f["thresholds"])
            elif isinstance(threshold, float):
                threshold = f"{threshold:.6g}"
            lines.append(
                f"  {name:16} {kind:9} {f['precision']:6.3f} {f['recall']:6.3f} {f['f1']:6.3f}"
                f" {f['far']:6.3f} {f['mar']:6.3f} {f['nab']:7.2f}  {threshold}"
            )
    return lines
