"""Online forecast evaluation: every model forecasts, THEN learns, one value at a time.

At step ``t`` each model has learned ``y[0..t-1]`` and nothing else; ``predict_one()`` returns
its forecasts of ``y[t], y[t+1], ..., y[t+H-1]``; only then is ``y[t]`` passed to
``learn_one``.  A forecast of ``y[t+k-1]`` is the model's "k-step-ahead" forecast.

Metrics for step ``k`` (all over the same target points for every model of the run: those
where every model gave a finite forecast, so warm-ups do not flatter anyone):

* ``rmse`` = sqrt(mean((f - y)^2)); ``mae`` = mean(|f - y|);
* ``mape`` = 100 * mean(|f - y| / |y|) over the points where ``y != 0`` (percent);
* ``nrmse`` = rmse / std(y), ``std`` the population (ddof=0) standard deviation of the actual
  values at the evaluated points: the normalisation of Numenta's nyc_taxi forecasting results;
* ``directional_accuracy``: among points where the series moved (``y[t+k-1] != y[t-1]``, the
  last value known when forecasting), the fraction where the forecast moved the same way
  (persistence never moves, so scores 0 here);
* ``coverage`` / ``mean_width``: for models with ``interval_one()``, the fraction of actual
  values inside [lower, upper] and the mean width.

A model on its own time grid (:class:`~vigil.bench.detectors.GridForecaster`: Vigil's, which
fills time gaps as the stream does) has its forecast steps matched to the rows they cover
(:func:`align_to_rows`): after a weekend gap in daily data, Monday is three of the stream's steps
after Friday, not one.

Files are read by :func:`read_series_file` (messy rows: see there) and evaluated one per
process with :func:`evaluate_files`; :func:`summarise` gives the figures across files.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import multiprocessing
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from vigil.bench.detectors import ForecastSetup, GridForecaster, forecaster_factories
from vigil.models.online import OnlineForecaster

if TYPE_CHECKING:
    from vigil.settings import ModelGroup

__all__ = [
    "NYC_TAXI_5_STEP_NRMSE",
    "FileEvaluation",
    "ForecastJob",
    "ForecastMetrics",
    "ForecastTrace",
    "RowReport",
    "SeriesEvaluation",
    "SeriesFile",
    "StreamRows",
    "align_to_rows",
    "build_forecasters",
    "detect_season",
    "evaluate_file",
    "evaluate_files",
    "evaluate_series",
    "forecast_metrics",
    "read_group_config",
    "read_series_column",
    "read_series_file",
    "run_online",
    "summarise",
]

FloatArray = npt.NDArray[np.float64]

# Numenta's published NRMSE on NAB's nyc_taxi, 5 steps (2.5 hours) ahead (Cui et al. 2016).
NYC_TAXI_5_STEP_NRMSE: dict[str, float] = {
    "Numenta online LSTM": 0.273,
    "Numenta HTM": 0.287,
    "persistence": 0.926,
}


@dataclass(frozen=True)
class ForecastMetrics:
    """Accuracy of one model at one horizon step over ``n`` points (None: not defined there)."""

    n: int
    rmse: float | None
    mae: float | None
    mape: float | None
    nrmse: float | None
    directional_accuracy: float | None
    coverage: float | None = None
    mean_width: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _mean_or_none(values: FloatArray) -> float | None:
    return float(np.mean(values)) if values.size else None


def forecast_metrics(
    forecast: npt.ArrayLike,
    actual: npt.ArrayLike,
    previous: npt.ArrayLike,
    lower: npt.ArrayLike | None = None,
    upper: npt.ArrayLike | None = None,
) -> ForecastMetrics:
    """Metrics of paired forecasts and actuals; ``previous`` is the last value known at forecast."""
    f = np.asarray(forecast, dtype=np.float64)
    y = np.asarray(actual, dtype=np.float64)
    last = np.asarray(previous, dtype=np.float64)
    if not (f.shape == y.shape == last.shape):
        raise ValueError("forecast, actual and previous must have the same shape")
    if f.size == 0:
        return ForecastMetrics(0, None, None, None, None, None)
    error = f - y
    rmse = math.sqrt(float(np.mean(error**2)))
    std = float(np.std(y))
    nonzero = y != 0
    moved = y != last
    coverage = width = None
    if lower is not None and upper is not None:
        lo = np.asarray(lower, dtype=np.float64)
        hi = np.asarray(upper, dtype=np.float64)
        bounded = np.isfinite(lo) & np.isfinite(hi)
        if bounded.any():
            inside = (y[bounded] >= lo[bounded]) & (y[bounded] <= hi[bounded])
            coverage = float(np.mean(inside))
            width = float(np.mean(hi[bounded] - lo[bounded]))
    same_way = np.sign(f[moved] - last[moved]) == np.sign(y[moved] - last[moved])
    mape = _mean_or_none(np.abs(error[nonzero]) / np.abs(y[nonzero]))
    return ForecastMetrics(
        n=int(f.size),
        rmse=rmse,
        mae=float(np.mean(np.abs(error))),
        mape=None if mape is None else 100.0 * mape,
        nrmse=rmse / std if std > 0 else None,
        directional_accuracy=_mean_or_none(same_way.astype(np.float64)),
        coverage=coverage,
        mean_width=width,
    )


@dataclass(frozen=True)
class ForecastTrace:
    """``forecasts[t, h]``: the forecast of ``y[t + h]`` made before ``y[t]`` was learned."""

    forecasts: FloatArray
    lower: FloatArray | None
    upper: FloatArray | None


def _per_step(bound: float | Sequence[float], horizon: int) -> FloatArray:
    if isinstance(bound, int | float):
        out = np.full(horizon, np.nan)
        out[0] = float(bound)  # a single pair bounds the next value only
        return out
    values = np.asarray(bound, dtype=np.float64)
    if values.shape != (horizon,):
        raise ValueError(f"interval_one gave {values.shape[0]} bounds, horizon is {horizon}")
    return values


def align_to_rows(trace: ForecastTrace, grid_steps: Sequence[int]) -> ForecastTrace:
    """A grid forecaster's trace re-indexed by rows: ``forecasts[t, h]`` of the result is the
    forecast step that covers row ``t + h``, NaN where that row is beyond the horizon (a gap
    came between) or the forecaster rejected it.

    ``grid_steps[r]``: steps the forecaster's grid moved on with row ``r`` (see
    :class:`~vigil.bench.detectors.GridForecaster`). The forecast at ``t`` was made after row
    ``t - 1``, so row ``t + h`` is ``position[t + h] - position[t - 1]`` grid steps ahead of it.
    Rows past the end of the series (never scored) are taken to come one grid step each.
    """
    n, horizon = trace.forecasts.shape
    steps = np.asarray(grid_steps, dtype=np.int64)
    if steps.shape != (n,):
        raise ValueError(f"{steps.size} grid steps for {n} rows")
    position = np.concatenate([np.cumsum(steps), steps.sum() + np.arange(1, horizon + 1)])
    moved = np.concatenate([steps, np.ones(horizon, dtype=np.int64)])
    out = [np.full((n, horizon), np.nan) for _ in range(3)]
    sources = [trace.forecasts, trace.lower, trace.upper]
    for t in range(1, n):
        for h in range(horizon):
            ahead = int(position[t + h] - position[t - 1])
            if moved[t + h] == 0 or not 1 <= ahead <= horizon:
                continue
            for aligned, raw in zip(out, sources, strict=True):
                if raw is not None:
                    aligned[t, h] = raw[t, ahead - 1]
    return ForecastTrace(
        out[0],
        None if trace.lower is None else out[1],
        None if trace.upper is None else out[2],
    )


def run_online(
    model: OnlineForecaster,
    values: npt.ArrayLike,
    horizon: int,
    timestamps: npt.ArrayLike | None = None,
    on_value: Callable[[], object] | None = None,
) -> ForecastTrace:
    """Predict-then-learn over ``values``; the model never sees ``y[t]`` before forecasting it.
    ``on_value`` is called after each value learned (a progress bar).

    With ``timestamps`` (epoch seconds), a model that has ``set_next_timestamp(ts)`` is told
    each value's time just before it learns the value (Vigil's forecaster then sees the real
    clock, as the stream does: the calendar inputs come from event timestamps). A
    :class:`~vigil.bench.detectors.GridForecaster`'s trace is aligned to the rows
    (:func:`align_to_rows`).
    """
    series = np.asarray(values, dtype=np.float64)
    stamps = None if timestamps is None else np.asarray(timestamps, dtype=np.float64).tolist()
    if stamps is not None and len(stamps) != series.size:
        raise ValueError(f"{len(stamps)} timestamps for {series.size} values")
    tell = getattr(model, "set_next_timestamp", None) if stamps is not None else None
    n = series.size
    forecasts = np.full((n, horizon), np.nan)
    interval = getattr(model, "interval_one", None)
    lower = np.full((n, horizon), np.nan) if interval is not None else None
    upper = np.full((n, horizon), np.nan) if interval is not None else None
    for t, value in enumerate(series.tolist()):
        forecast = list(model.predict_one())
        if len(forecast) < horizon:
            raise ValueError(
                f"{type(model).__name__}.predict_one() gave {len(forecast)} values, need {horizon}"
            )
        forecasts[t] = forecast[:horizon]
        if interval is not None and lower is not None and upper is not None:
            low, high = interval()
            lower[t] = _per_step(low, horizon)
            upper[t] = _per_step(high, horizon)
        if tell is not None and stamps is not None:
            tell(stamps[t])
        model.learn_one(value)
        if on_value is not None:
            on_value()
    trace = ForecastTrace(forecasts, lower, upper)
    if isinstance(model, GridForecaster):
        return align_to_rows(trace, model.grid_steps)
    return trace


@dataclass(frozen=True)
class StreamRows:
    """What a grid forecaster (the stream) did with the rows: ``gaps`` rows came after a time
    gap, before which it filled ``filled`` missing steps with its gap policy; ``rejected``
    counts its rejections by code; ``beyond_horizon[k]`` counts the rows it had no ``k``-step
    forecast for because a gap put them more than ``horizon`` grid steps ahead."""

    gaps: int
    filled: int
    rejected: dict[str, int]
    beyond_horizon: dict[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "gaps": self.gaps,
            "filled": self.filled,
            "rejected": dict(self.rejected),
            "beyond_horizon": {f"step_{k}": v for k, v in self.beyond_horizon.items()},
        }


def stream_rows(model: GridForecaster, horizon: int, steps: Sequence[int]) -> StreamRows:
    """Gap fills and rejections of a grid forecaster that has learned a whole series."""
    grid = np.asarray(model.grid_steps, dtype=np.int64)
    position = np.cumsum(grid)
    beyond = {}
    for k in steps:
        origins, targets = _target_rows(grid.size, k)
        ahead = position[targets] - position[origins - 1]
        beyond[k] = int(np.sum((grid[targets] > 0) & (ahead > horizon)))
    return StreamRows(
        gaps=int(np.sum(grid > 1)),
        filled=int(np.sum(grid[grid > 1] - 1)),
        rejected=dict(Counter(model.rejected.values())),
        beyond_horizon=beyond,
    )


@dataclass(frozen=True)
class SeriesEvaluation:
    """Every model's traces and metrics on one series; ``metrics[model][step]``."""

    name: str
    values: FloatArray
    horizon: int
    season: int | None
    traces: dict[str, ForecastTrace]
    metrics: dict[str, dict[int, ForecastMetrics]]
    stream: dict[str, StreamRows] = field(default_factory=dict)  # grid forecasters only

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": int(self.values.size),
            "season": self.season,
            "models": {
                model: {f"step_{k}": m.to_dict() for k, m in steps.items()}
                for model, steps in self.metrics.items()
            },
            "stream": {model: rows.to_dict() for model, rows in self.stream.items()},
        }


def _target_rows(n: int, step: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Forecast origins ``t`` (with a known previous value) and their targets ``t + step - 1``."""
    origins = np.arange(1, n - step + 1, dtype=np.int64)
    return origins, origins + step - 1


def evaluate_series(
    name: str,
    values: npt.ArrayLike,
    models: Mapping[str, OnlineForecaster],
    horizon: int,
    season: int | None = None,
    steps: Sequence[int] | None = None,
    timestamps: npt.ArrayLike | None = None,
    on_value: Callable[[], object] | None = None,
) -> SeriesEvaluation:
    """Run every model online over ``values``; score steps 1 and ``horizon`` (or ``steps``)."""
    if horizon < 1:
        raise ValueError("horizon must be at least 1")
    series = np.asarray(values, dtype=np.float64)
    wanted = sorted(set(steps if steps is not None else (1, horizon)))
    if any(not 1 <= k <= horizon for k in wanted):
        raise ValueError(f"steps must lie in 1..{horizon}")
    traces = {
        model_name: run_online(model, series, horizon, timestamps, on_value)
        for model_name, model in models.items()
    }
    metrics: dict[str, dict[int, ForecastMetrics]] = {model_name: {} for model_name in models}
    for k in wanted:
        origins, targets = _target_rows(series.size, k)
        usable = np.isfinite(series[targets]) & np.isfinite(series[origins - 1])
        for trace in traces.values():
            usable &= np.isfinite(trace.forecasts[origins, k - 1])
        o, tg = origins[usable], targets[usable]
        for model_name, trace in traces.items():
            metrics[model_name][k] = forecast_metrics(
                trace.forecasts[o, k - 1],
                series[tg],
                series[o - 1],
                None if trace.lower is None else trace.lower[o, k - 1],
                None if trace.upper is None else trace.upper[o, k - 1],
            )
    stream = {
        model_name: stream_rows(model, horizon, wanted)
        for model_name, model in models.items()
        if isinstance(model, GridForecaster)
    }
    return SeriesEvaluation(name, series, horizon, season, traces, metrics, stream)


def _autocorrelation(x: FloatArray, max_lag: int) -> FloatArray:
    centred = x - x.mean()
    variance = float(np.dot(centred, centred))
    if variance == 0:
        return np.zeros(max_lag + 2)
    size = 1 << int(2 * centred.size - 1).bit_length()
    spectrum = np.fft.rfft(centred, size)
    return np.fft.irfft(spectrum * np.conj(spectrum), size)[: max_lag + 2] / variance


def detect_season(
    values: npt.ArrayLike, prefix_fraction: float = 0.2, min_acf: float = 0.3
) -> int | None:
    """The dominant cycle length, or None.

    Only the first ``prefix_fraction`` of the series is looked at (what an operator would have
    seen when setting the model up), and a lag needs two full cycles in it.  A candidate is a
    peak of the autocorrelation of the linearly detrended values, after it first turns negative,
    of at least ``min_acf``; the changes (first differences) must correlate at that lag too,
    which a random walk's do not.  The shortest candidate within 90% of the highest one is
    returned (multiples of the true cycle peak about as high).
    """
    series = np.asarray(values, dtype=np.float64)
    series = series[np.isfinite(series)]
    prefix = series[: int(series.size * prefix_fraction)]
    max_lag = (prefix.size - 1) // 2
    if max_lag < 3:
        return None
    steps = np.arange(prefix.size, dtype=np.float64)
    detrended = prefix - np.polyval(np.polyfit(steps, prefix, 1), steps)
    levels = _autocorrelation(detrended, max_lag)
    changes = _autocorrelation(np.diff(prefix), max_lag)
    negative = np.flatnonzero(levels[1 : max_lag + 1] < 0)
    if negative.size == 0:
        return None
    lags = np.arange(int(negative[0]) + 2, max_lag + 1)
    peaks = lags[(levels[lags] > levels[lags - 1]) & (levels[lags] >= levels[lags + 1])]
    peaks = peaks[(levels[peaks] >= min_acf) & (changes[peaks] >= 0.1)]
    if peaks.size == 0:
        return None
    highest = float(levels[peaks].max())
    return int(peaks[levels[peaks] >= 0.9 * highest][0])


def build_forecasters(
    setup: ForecastSetup, names: Sequence[str] | None = None
) -> dict[str, OnlineForecaster]:
    """Fresh forecasters from the registry (all, or ``names``); inapplicable ones left out."""
    chosen = list(names) if names else list(forecaster_factories)
    unknown = [n for n in chosen if n not in forecaster_factories]
    if unknown:
        known = ", ".join(sorted(forecaster_factories))
        raise ValueError(f"unknown forecaster(s) {', '.join(unknown)}; registered: {known}")
    models = {}
    for name in chosen:
        model = forecaster_factories[name](setup)
        if model is not None:
            models[name] = model
    return models


TIME_COLUMNS = ("timestamp", "date", "time", "datetime")  # the first present is the row's time


def _time_column(fields: Sequence[str]) -> str | None:
    return next((f for name in TIME_COLUMNS for f in fields if f.strip().lower() == name), None)


def read_series_column(
    path: Path, column: str = "value", delimiter: str = ","
) -> tuple[FloatArray, list[str] | None]:
    """One numeric column of a CSV (empty cells are NaN), and its timestamps if it has any.

    Strict: a cell that is not a number is an error. ``vigil eval forecast`` reads with
    :func:`read_series_file`, which copes with messy rows.
    """
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"series file not found: {path}") from None
    with handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        fields = reader.fieldnames or []
        if column not in fields:
            raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(fields)})")
        time_column = _time_column(fields)
        values: list[float] = []
        stamps: list[str] = []
        for line_no, row in enumerate(reader, start=2):
            text = (row[column] or "").strip()
            try:
                values.append(float(text) if text else math.nan)
            except ValueError:
                raise ValueError(f"{path}:{line_no}: {column}={text!r} is not a number") from None
            if time_column is not None:
                stamps.append(row[time_column])
    return np.asarray(values, dtype=np.float64), (stamps if time_column is not None else None)


@dataclass(frozen=True)
class RowReport:
    """What :func:`read_series_file` did with a file's data rows."""

    read: int  # data rows in the file
    kept: int  # rows evaluated
    empty_value: int  # kept, value missing: an empty cell
    unreadable_value: int  # kept, value missing: text that is not a number
    non_finite_value: int  # kept, value missing: nan, inf or -inf
    bad_timestamp: int  # dropped: time cell empty or unreadable
    duplicate_timestamp: int  # dropped: the time of an earlier row (the first one is kept)
    out_of_order: int  # kept, moved into time order (the fewest rows that had to move)

    @property
    def missing(self) -> int:
        return self.empty_value + self.unreadable_value + self.non_finite_value

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class SeriesFile:
    """One series as evaluated: ``values`` in time order, ``timestamps`` (epoch seconds) and
    ``times`` (for plots) when the file has a time column."""

    path: Path
    values: FloatArray
    timestamps: FloatArray | None
    times: npt.NDArray[np.datetime64] | None
    rows: RowReport


def _parse_time(text: str) -> np.datetime64 | None:
    """Epoch seconds, or ISO 8601 (``2014-07-01 00:00:00``, ``2014-07-01``, a UTC offset is
    converted to UTC); None if neither."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return np.datetime64(round(seconds * 1e6), "us") if math.isfinite(seconds) else None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(parsed, "us")


def _longest_in_order(times: Sequence[int]) -> int:
    """The length of the longest non-decreasing subsequence: the other rows are the fewest that
    must move to put the file in time order (one late row counts once, not every row after)."""
    tails: list[int] = []
    for value in times:
        at = bisect.bisect_right(tails, value)
        if at == len(tails):
            tails.append(value)
        else:
            tails[at] = value
    return len(tails)


def _delimiter(text: str) -> str:
    named = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";"}
    delimiter = named.get(text, text)
    if len(delimiter) != 1:
        raise ValueError(f"--delimiter must be one character (or 'tab'), got {text!r}")
    return delimiter


def read_series_file(path: Path, column: str = "value", delimiter: str = ",") -> SeriesFile:
    """One numeric column of a delimited file, made fit for online evaluation; never fails on
    a messy row (only on a missing file or column, or a file with no usable row).

    * A value cell that is empty, not a number, or non-finite is a **missing value**: the row is
      kept (it is a step in time), models learn nothing from it and it is not scored.
    * With a time column (the first of ``timestamp``, ``date``, ``time``, ``datetime``, any
      case): rows whose time is empty or unreadable are **dropped**; the rest are put in **time
      order** (a stable sort: a file written newest first works); a row repeating an earlier
      row's time is **dropped**, the first one kept (the stream dead-letters such a duplicate).
    * Without one, rows are taken in file order.
    """
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"series file not found: {path}") from None
    counts: Counter[str] = Counter()
    values: list[float] = []
    stamps: list[np.datetime64] = []
    with handle:
        reader = csv.DictReader(handle, delimiter=_delimiter(delimiter))
        fields = reader.fieldnames or []
        if column not in fields:
            hint = "" if len(fields) > 1 else f"; is the delimiter {delimiter!r} right?"
            raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(fields)}){hint}")
        time_column = _time_column(fields)
        for row in reader:
            counts["read"] += 1
            if time_column is not None:
                stamp = _parse_time(row.get(time_column) or "")
                if stamp is None:
                    counts["bad_timestamp"] += 1
                    continue
                stamps.append(stamp)
            text = (row.get(column) or "").strip()
            value = math.nan
            if not text:
                counts["empty_value"] += 1
            else:
                try:
                    value = float(text)
                except ValueError:
                    counts["unreadable_value"] += 1
                else:
                    if not math.isfinite(value):
                        counts["non_finite_value"] += 1
                        value = math.nan
            values.append(value)
    series = np.asarray(values, dtype=np.float64)
    times: npt.NDArray[np.datetime64] | None = None
    if time_column is not None:
        if counts["read"] and not stamps:
            raise ValueError(f"{path}: no readable time in column {time_column!r}")
        times = np.asarray(stamps, dtype="datetime64[us]")
        micros = times.astype(np.int64)
        counts["out_of_order"] = micros.size - _longest_in_order(micros.tolist())
        order = np.argsort(micros, kind="stable")
        micros, series, times = micros[order], series[order], times[order]
        first = np.ones(micros.size, dtype=bool)
        first[1:] = micros[1:] != micros[:-1]
        counts["duplicate_timestamp"] = int(np.sum(~first))
        micros, series, times = micros[first], series[first], times[first]
    if not np.isfinite(series).any():
        raise ValueError(f"{path}: column {column!r} has no numeric value")
    report = RowReport(
        read=counts["read"],
        kept=int(series.size),
        empty_value=counts["empty_value"],
        unreadable_value=counts["unreadable_value"],
        non_finite_value=counts["non_finite_value"],
        bad_timestamp=counts["bad_timestamp"],
        duplicate_timestamp=counts["duplicate_timestamp"],
        out_of_order=counts["out_of_order"],
    )
    seconds = None if times is None else times.astype(np.int64) / 1e6
    return SeriesFile(path, series, seconds, times, report)


DEFAULT_HORIZON = 5


def read_group_config(path: Path, horizon: int | None = None) -> tuple[ModelGroup, int]:
    """The ModelGroup in a JSON file (one object, as an element of ``VIGIL_GROUPS``; a
    one-element list is accepted too) and the horizon to evaluate.

    The file's ``model.horizon`` and ``horizon`` (``--horizon``) must agree when both are
    given; either one alone sets both; neither means ``DEFAULT_HORIZON``. The group must be
    univariate with ``inference: window``: the evaluation forecasts one column, and the replay
    harness has no stateful stepper.
    """
    from pydantic import ValidationError

    from vigil.settings import ModelGroup

    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"group config not found: {path}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"group config {path}: not JSON ({exc})") from None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise ValueError(f"group config {path}: expected one JSON object (a model group)")
    model = data.get("model", {})
    if isinstance(model, dict):
        given = model.get("horizon")
        if given is not None and horizon is not None and given != horizon:
            raise ValueError(
                f"group config {path}: model.horizon is {given} but --horizon is {horizon};"
                " make them agree or leave one out"
            )
        if given is None:
            data = {**data, "model": {**model, "horizon": horizon or DEFAULT_HORIZON}}
    try:
        group = ModelGroup.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'group'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(f"group config {path}: {problems}") from None
    if group.model.input_size != 1 or group.channels:
        raise ValueError(f"group config {path}: the forecast evaluation needs a univariate group")
    if group.inference != "window":
        raise ValueError(
            f"group config {path}: inference {group.inference!r} is not supported here"
            " (the replay harness runs window inference)"
        )
    return group, group.model.horizon


@dataclass(frozen=True)
class ForecastJob:
    """One file to evaluate, everything a worker process needs (``group``: a ModelGroup as
    JSON, None for ``forecast_group(horizon)``; ``season`` None to detect, 0 for none)."""

    path: Path
    column: str = "value"
    horizon: int = 5
    season: int | None = None
    models: tuple[str, ...] = ()
    delimiter: str = ","
    group: dict[str, Any] | None = None
    seed: int = 0


@dataclass(frozen=True)
class FileEvaluation:
    """A file's evaluation, what happened to its rows, and its wall time."""

    series: SeriesFile
    evaluation: SeriesEvaluation
    seconds: float


def evaluate_file(job: ForecastJob, rows_bar: bool = False) -> FileEvaluation:
    """Read, clean and evaluate one file with fresh models (runs in a worker process);
    ``rows_bar``: a progress bar of values learned on stderr (a long single file moves too)."""
    from tqdm import tqdm

    from vigil.settings import ModelGroup

    started = time.perf_counter()
    series = read_series_file(job.path, job.column, job.delimiter)
    if series.values.size <= job.horizon + 1:
        raise ValueError(
            f"{job.path}: {series.values.size} values, too few for horizon {job.horizon}"
        )
    period = detect_season(series.values) if job.season is None else (job.season or None)
    group = None if job.group is None else ModelGroup.model_validate(job.group)
    setup = ForecastSetup(job.horizon, period, group, job.seed)
    models = build_forecasters(setup, job.models)
    total = series.values.size * len(models)
    with tqdm(
        total=total, desc=job.path.name, unit="value", file=sys.stderr, leave=False,
        disable=not rows_bar, mininterval=0.5,
    ) as bar:  # fmt: skip
        evaluation = evaluate_series(
            str(job.path),
            series.values,
            models,
            job.horizon,
            period,
            timestamps=series.timestamps,
            on_value=bar.update if rows_bar else None,
        )
    return FileEvaluation(series, evaluation, time.perf_counter() - started)


def evaluate_files(
    jobs: Sequence[ForecastJob], workers: int = 1, progress: bool = True
) -> list[FileEvaluation]:
    """Every job, in ``workers`` processes started fresh ("spawn", as ``vigil eval nab``);
    results in the jobs' order and identical whatever ``workers`` is (each file gets fresh,
    seeded models; torch runs one thread either way)."""
    from tqdm import tqdm

    from vigil.bench.nab.runner import _single_threaded_worker

    done: dict[int, FileEvaluation] = {}
    bar = tqdm(total=len(jobs), desc="forecast", unit="file", file=sys.stderr, disable=not progress)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for index, job in enumerate(jobs):
                done[index] = evaluate_file(job, rows_bar=progress)
                bar.update()
        else:
            # the largest file first, so that no worker is left with one at the end
            order = sorted(range(len(jobs)), key=lambda i: -_size(jobs[i].path))
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(workers, len(jobs)), _single_threaded_worker) as pool:
                results = pool.imap(evaluate_file, [jobs[i] for i in order])
                for index, result in zip(order, results, strict=True):
                    done[index] = result
                    bar.update()
    finally:
        bar.close()
    return [done[i] for i in range(len(jobs))]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _median_or_none(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 6) if values else None


def _mean_of(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 6) if values else None


def summarise(
    evaluations: Sequence[SeriesEvaluation], baseline: str = "persistence"
) -> dict[str, dict[str, dict[str, Any]]]:
    """Figures across series, per model and step: the mean and median of its RMSE divided by
    ``baseline``'s on the same points (series where both are defined and the baseline's is not
    0), the share of those series where the ratio is below 1, and the mean and median interval
    coverage over the series where the model gave one.

    ``{model: {"step_k": {"series", "rmse_ratio_mean", "rmse_ratio_median",
    "beats_baseline", "coverage_mean", "coverage_median", "coverage_series"}}}``; the baseline
    itself is listed only if it has intervals.
    """
    ratios: dict[str, dict[int, list[float]]] = {}
    coverage: dict[str, dict[int, list[float]]] = {}
    for evaluation in evaluations:
        reference = evaluation.metrics.get(baseline, {})
        for model, steps in evaluation.metrics.items():
            for k, m in steps.items():
                ratios.setdefault(model, {}).setdefault(k, [])
                coverage.setdefault(model, {}).setdefault(k, [])
                base = reference.get(k)
                if m.rmse is not None and base is not None and base.rmse:
                    ratios[model][k].append(m.rmse / base.rmse)
                if m.coverage is not None:
                    coverage[model][k].append(m.coverage)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for model, by_step in ratios.items():
        has_intervals = any(coverage[model].values())
        if model == baseline and not has_intervals:
            continue
        summary[model] = {}
        for k, found in by_step.items():
            covered = coverage[model][k]
            mine = found if model != baseline else []
            summary[model][f"step_{k}"] = {
                "series": len(mine),
                "rmse_ratio_mean": _mean_of(mine),
                "rmse_ratio_median": _median_or_none(mine),
                "beats_baseline": _mean_of([float(r < 1.0) for r in mine]),
                "coverage_mean": _mean_of(covered),
                "coverage_median": _median_or_none(covered),
                "coverage_series": len(covered),
            }
    return summary
