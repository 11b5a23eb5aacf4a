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
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vigil.bench.detectors import ForecastSetup, forecaster_factories
from vigil.models.online import OnlineForecaster

__all__ = [
    "NYC_TAXI_5_STEP_NRMSE",
    "ForecastMetrics",
    "ForecastTrace",
    "SeriesEvaluation",
    "build_forecasters",
    "detect_season",
    "evaluate_series",
    "forecast_metrics",
    "read_series_column",
    "run_online",
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


def run_online(
    model: OnlineForecaster,
    values: npt.ArrayLike,
    horizon: int,
    timestamps: npt.ArrayLike | None = None,
) -> ForecastTrace:
    """Predict-then-learn over ``values``; the model never sees ``y[t]`` before forecasting it.

    With ``timestamps`` (epoch seconds), a model that has ``set_next_timestamp(ts)`` is told
    each value's time just before it learns the value (Vigil's forecaster then sees the real
    clock, as the stream does: the calendar inputs come from event timestamps).
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
    return ForecastTrace(forecasts, lower, upper)


@dataclass(frozen=True)
class SeriesEvaluation:
    """Every model's traces and metrics on one series; ``metrics[model][step]``."""

    name: str
    values: FloatArray
    horizon: int
    season: int | None
    traces: dict[str, ForecastTrace]
    metrics: dict[str, dict[int, ForecastMetrics]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": int(self.values.size),
            "season": self.season,
            "models": {
                model: {f"step_{k}": m.to_dict() for k, m in steps.items()}
                for model, steps in self.metrics.items()
            },
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
) -> SeriesEvaluation:
    """Run every model online over ``values``; score steps 1 and ``horizon`` (or ``steps``)."""
    if horizon < 1:
        raise ValueError("horizon must be at least 1")
    series = np.asarray(values, dtype=np.float64)
    wanted = sorted(set(steps if steps is not None else (1, horizon)))
    if any(not 1 <= k <= horizon for k in wanted):
        raise ValueError(f"steps must lie in 1..{horizon}")
    traces = {
        model_name: run_online(model, series, horizon, timestamps)
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
    return SeriesEvaluation(name, series, horizon, season, traces, metrics)


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


def read_series_column(path: Path, column: str = "value") -> tuple[FloatArray, list[str] | None]:
    """One numeric column of a CSV (empty cells are NaN), and its timestamps if it has any."""
    try:
        handle = path.open(newline="")
    except FileNotFoundError:
        raise FileNotFoundError(f"series file not found: {path}") from None
    with handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if column not in fields:
            raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(fields)})")
        time_column = next((c for c in ("timestamp", "date", "time") if c in fields), None)
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
