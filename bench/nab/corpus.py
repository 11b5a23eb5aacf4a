"""Reading and writing NAB's on-disk layout: data files, label windows, profiles, results.

Layouts (as in numenta/NAB):

* data:     ``DATA/<category>/<file>.csv`` with ``timestamp,value``;
* labels:   ``combined_windows.json``: ``{"<category>/<file>.csv": [[start, end], ...]}``;
* results:  ``RESULTS/<detector>/<category>/<detector>_<file>.csv`` with at least
  ``timestamp,anomaly_score`` (NAB also writes ``value``, ``label`` and ``S(t)_<profile>``);
* scores:   ``RESULTS/<detector>/<detector>_<profile>_scores.csv``.

All I/O for the evaluation lives here; the scoring itself is in :mod:`vigil.bench.nab.scoring`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from vigil.bench.nab.scoring import CostMatrix

__all__ = [
    "DataSeries",
    "PublishedFileScore",
    "ResultSeries",
    "Windows",
    "parse_timestamps",
    "read_data_corpus",
    "read_data_series",
    "read_profiles",
    "read_published_scores",
    "read_result_series",
    "read_results_corpus",
    "read_thresholds",
    "read_windows",
    "result_path",
    "write_result_series",
]

Windows = dict[str, list[tuple[np.datetime64, np.datetime64]]]


def parse_timestamps(texts: Sequence[str]) -> npt.NDArray[np.datetime64]:
    """NAB timestamps (``2014-07-01 00:00:00[.ffffff]``) as microsecond datetime64."""
    try:
        return np.array(list(texts), dtype="datetime64[us]")
    except ValueError as exc:
        raise ValueError(f"unreadable timestamp: {exc}") from None


@dataclass(frozen=True)
class DataSeries:
    """One NAB data file: ``relative_path`` is ``<category>/<file>.csv``."""

    relative_path: str
    timestamp_texts: list[str]
    timestamps: npt.NDArray[np.datetime64]
    values: npt.NDArray[np.float64]


@dataclass(frozen=True)
class ResultSeries:
    """One detector output file, keyed by the data file it belongs to."""

    relative_path: str
    timestamps: npt.NDArray[np.datetime64]
    anomaly_scores: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64] | None = None
    labels: npt.NDArray[np.int64] | None = None
    row_scores: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishedFileScore:
    """One row of NAB's ``<detector>_<profile>_scores.csv``."""

    threshold: float
    score: float
    tp: int
    tn: int
    fp: int
    fn: int
    total: int


def _read_columns(path: Path) -> dict[str, list[str]]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: empty file") from None
        columns: list[list[str]] = [[] for _ in header]
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{line_no}: {len(row)} fields, header has {len(header)}")
            for column, text in zip(columns, row, strict=True):
                column.append(text)
    return dict(zip(header, columns, strict=True))


def _column(path: Path, columns: Mapping[str, list[str]], name: str) -> list[str]:
    if name not in columns:
        raise ValueError(f"{path}: no {name!r} column (columns: {', '.join(columns)})")
    return columns[name]


def _floats(path: Path, texts: Sequence[str], name: str) -> npt.NDArray[np.float64]:
    try:
        return np.array([float(t) for t in texts], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: column {name!r}: {exc}") from None


def read_data_series(path: Path, relative_path: str, column: str = "value") -> DataSeries:
    """Read one ``timestamp,value`` file."""
    columns = _read_columns(path)
    texts = _column(path, columns, "timestamp")
    return DataSeries(
        relative_path=relative_path,
        timestamp_texts=list(texts),
        timestamps=parse_timestamps(texts),
        values=_floats(path, _column(path, columns, column), column),
    )


def _csv_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.csv") if not p.name.startswith("."))


def read_data_corpus(data_dir: Path, only: Iterable[str] | None = None) -> list[DataSeries]:
    """Every ``<category>/<file>.csv`` under ``data_dir`` (or just those named in ``only``)."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir}")
    wanted = set(only) if only is not None else None
    series = []
    for path in _csv_files(data_dir):
        relative = path.relative_to(data_dir).as_posix()
        if wanted is None or relative in wanted:
            series.append(read_data_series(path, relative))
    return series


def result_path(results_dir: Path, detector: str, relative_path: str) -> Path:
    """Where NAB keeps a detector's output for one data file."""
    category, _, name = relative_path.rpartition("/")
    return results_dir / detector / category / f"{detector}_{name}"


def read_result_series(path: Path, relative_path: str) -> ResultSeries:
    """Read one detector output file (``anomaly_score`` required; NAB's extra columns kept)."""
    columns = _read_columns(path)
    timestamps = parse_timestamps(_column(path, columns, "timestamp"))
    scores = _floats(path, _column(path, columns, "anomaly_score"), "anomaly_score")
    values = _floats(path, columns["value"], "value") if "value" in columns else None
    labels = None
    if "label" in columns:
        labels = _floats(path, columns["label"], "label").astype(np.int64)
    row_scores = {
        name.removeprefix("S(t)_"): _floats(path, texts, name)
        for name, texts in columns.items()
        if name.startswith("S(t)_")
    }
    return ResultSeries(relative_path, timestamps, scores, values, labels, row_scores)


def read_results_corpus(results_dir: Path, detector: str) -> list[ResultSeries]:
    """Every ``<detector>_<file>.csv`` under ``results_dir/<detector>/<category>/``."""
    root = results_dir / detector
    if not root.is_dir():
        raise FileNotFoundError(f"no results for detector {detector!r}: {root} is not a directory")
    prefix = f"{detector}_"
    series = []
    for path in _csv_files(root):
        relative = path.relative_to(root)
        if len(relative.parts) < 2 or not path.name.startswith(prefix):
            continue  # e.g. the detector's own *_scores.csv at the top level
        data_relative = (relative.parent / path.name.removeprefix(prefix)).as_posix()
        series.append(read_result_series(path, data_relative))
    if not series:
        raise FileNotFoundError(f"no {prefix}*.csv result files under {root}")
    return series


def write_result_series(
    path: Path,
    timestamp_texts: Sequence[str],
    values: npt.ArrayLike,
    anomaly_scores: npt.ArrayLike,
    labels: npt.ArrayLike,
) -> None:
    """Write NAB's results format: ``timestamp,value,anomaly_score,label``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values_list = np.asarray(values, dtype=np.float64).tolist()
    scores_list = np.asarray(anomaly_scores, dtype=np.float64).tolist()
    labels_list = np.asarray(labels, dtype=np.int64).tolist()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "value", "anomaly_score", "label"])
        for row in zip(timestamp_texts, values_list, scores_list, labels_list, strict=True):
            writer.writerow([row[0], repr(row[1]), repr(row[2]), row[3]])


def read_windows(path: Path) -> Windows:
    """``combined_windows.json`` as ``{relative_path: [(start, end), ...]}``."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"labels file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object keyed by data file")
    windows: Windows = {}
    for relative, limits in raw.items():
        pairs = []
        for limit in limits:
            if len(limit) != 2:
                raise ValueError(f"{path}: {relative}: a window needs [start, end], got {limit}")
            start, end = parse_timestamps(limit)
            pairs.append((start, end))
        windows[relative] = pairs
    return windows


def read_profiles(path: Path) -> dict[str, CostMatrix]:
    """NAB's ``config/profiles.json``: ``{profile: {"CostMatrix": {...}}}``."""
    raw = json.loads(path.read_text())
    try:
        return {name: CostMatrix.from_nab(body["CostMatrix"]) for name, body in raw.items()}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: each profile needs a CostMatrix ({exc})") from None


def read_thresholds(path: Path, detector: str) -> dict[str, float]:
    """NAB's ``config/thresholds.json`` for one detector: ``{profile: threshold}``."""
    raw = json.loads(path.read_text())
    if detector not in raw:
        raise ValueError(f"{path}: no thresholds for detector {detector!r} (has {', '.join(raw)})")
    return {profile: float(body["threshold"]) for profile, body in raw[detector].items()}


def read_published_scores(path: Path) -> dict[str, PublishedFileScore]:
    """NAB's per-file ``<detector>_<profile>_scores.csv`` (the ``Totals`` row, if any, skipped)."""
    columns = _read_columns(path)
    scores = {}
    for i, name in enumerate(_column(path, columns, "File")):
        if not name or columns["Detector"][i] == "Totals":
            continue
        scores[name] = PublishedFileScore(
            threshold=float(columns["Threshold"][i]),
            score=float(columns["Score"][i]),
            tp=int(columns["TP"][i]),
            tn=int(columns["TN"][i]),
            fp=int(columns["FP"][i]),
            fn=int(columns["FN"][i]),
            total=int(columns["Total_Count"][i]),
        )
    return scores
