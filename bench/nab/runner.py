"""Run an online detector over every labelled series of a NAB-style corpus and write NAB's
results files, one process per core.

Each series gets a fresh detector from :data:`vigil.bench.detectors.detector_factories`, sees its
values one at a time (score, then learn) and never anything ahead.  Scores are written, and
handed to the scorer, with 12 significant digits, like NAB's own results files: a detector's
output scored from disk later (``vigil eval nab-score``) then gives the very same figures.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from vigil.bench.nab.corpus import Windows, read_data_series, result_path, write_result_series
from vigil.bench.nab.evaluation import ScoredFile
from vigil.bench.nab.scoring import layout_file

__all__ = ["CorpusRun", "DetectionJob", "detect_series", "plan_jobs", "run_corpus"]


def _printed(score: float) -> float:
    """The score as NAB's files carry it: 12 significant digits."""
    return float(f"{score:.12g}")


def detect_series(
    detector: object,
    values: npt.ArrayLike,
    name: str = "",
    timestamps: npt.NDArray[np.datetime64] | None = None,
) -> np.ndarray:
    """Feed ``values`` one by one; return the scores, checked to be numbers in [0, 1].

    A detector with ``score_series(timestamps, values) -> scores`` (epoch seconds; still
    scoring each value before learning it) gets the whole series at once when ``timestamps``
    are given: Vigil's own detector batches the stream's forward passes that way.
    """
    series = np.asarray(values, dtype=np.float64)
    score_series = getattr(detector, "score_series", None)
    if timestamps is not None and score_series is not None:
        seconds = timestamps.astype("datetime64[us]").astype(np.int64) / 1e6
        raw = np.asarray(score_series(seconds, series), dtype=np.float64)
        if raw.shape != series.shape:
            raise ValueError(
                f"detector {name!r} returned {raw.shape} scores for {series.size} values"
            )
        raw_scores = raw.tolist()
    else:
        score_one = getattr(detector, "score_one", None)
        if score_one is None:
            raise TypeError(f"detector {name!r} has no score_one(value) method")
        raw_scores = [float(score_one(value)) for value in series.tolist()]
    scores = np.empty(series.size, dtype=np.float64)
    for i, score in enumerate(raw_scores):
        if not (0.0 <= score <= 1.0):  # also catches NaN
            raise ValueError(
                f"detector {name!r} returned {score} at row {i}; scores must be in [0, 1]"
            )
        scores[i] = _printed(score)
    return scores


@dataclass(frozen=True)
class DetectionJob:
    """One series to run: where it is, what it is called in the labels, where its output goes."""

    detector: str
    data_path: Path
    relative_path: str
    output_path: Path
    windows: list[tuple[np.datetime64, np.datetime64]]


@dataclass(frozen=True)
class JobOutcome:
    scored: ScoredFile
    rows: int
    seconds: float


@dataclass(frozen=True)
class CorpusRun:
    """What ran: scored files (in corpus order), labelled-less files skipped, wall time."""

    files: list[ScoredFile]
    skipped: list[str]
    rows: int
    seconds: float


def plan_jobs(
    detector: str, data_dir: Path, windows: Windows, out_dir: Path
) -> tuple[list[DetectionJob], list[str]]:
    """One job per data file the labels know; the others are returned as skipped (NAB does so)."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir}")
    jobs, skipped = [], []
    for path in sorted(data_dir.rglob("*.csv")):
        relative = path.relative_to(data_dir).as_posix()
        if relative not in windows:
            skipped.append(relative)
            continue
        jobs.append(
            DetectionJob(
                detector=detector,
                data_path=path,
                relative_path=relative,
                output_path=result_path(out_dir, detector, relative),
                windows=windows[relative],
            )
        )
    return jobs, skipped


def _run_job(job: DetectionJob) -> JobOutcome:
    from vigil.bench.detectors import detector_factories

    started = time.perf_counter()
    series = read_data_series(job.data_path, job.relative_path)
    layout = layout_file(series.timestamps, job.windows)
    scores = detect_series(
        detector_factories[job.detector](), series.values, job.detector, series.timestamps
    )
    write_result_series(
        job.output_path,
        series.timestamp_texts,
        series.values,
        scores,
        layout.labels.astype(np.int64),
    )
    return JobOutcome(
        ScoredFile(job.relative_path, series.timestamps, scores),
        rows=len(scores),
        seconds=time.perf_counter() - started,
    )


def _single_threaded_worker() -> None:
    """Two processes on two cores: each numeric library should use one thread."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def run_corpus(
    detector: str,
    data_dir: Path,
    windows: Windows,
    out_dir: Path,
    workers: int = 2,
    progress: bool = True,
) -> CorpusRun:
    """Run ``detector`` over every labelled series under ``data_dir``; write NAB results files."""
    from vigil.bench.detectors import detector_factories

    if detector not in detector_factories:
        known = ", ".join(sorted(detector_factories))
        raise ValueError(f"unknown detector {detector!r}; registered: {known}")
    jobs, skipped = plan_jobs(detector, data_dir, windows, out_dir)
    if not jobs:
        raise ValueError(f"no data file under {data_dir} has label windows")
    started = time.perf_counter()
    outcomes: dict[str, JobOutcome] = {}
    bar = tqdm(total=len(jobs), desc=detector, unit="file", file=sys.stderr, disable=not progress)
    try:
        if workers <= 1 or len(jobs) == 1:
            for job in jobs:
                outcomes[job.relative_path] = _run_job(job)
                bar.update()
        else:
            # the longest series first, so that no worker is left with one at the end
            ordered = sorted(jobs, key=lambda j: j.data_path.stat().st_size, reverse=True)
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(workers, len(jobs)), _single_threaded_worker) as pool:
                for outcome in pool.imap_unordered(_run_job, ordered):
                    outcomes[outcome.scored.relative_path] = outcome
                    bar.update()
    finally:
        bar.close()
    files = [outcomes[job.relative_path].scored for job in jobs]
    return CorpusRun(
        files=files,
        skipped=skipped,
        rows=sum(o.rows for o in outcomes.values()),
        seconds=time.perf_counter() - started,
    )
