"""`vigil eval …`: NAB scoring and forecast evaluation.

Every command prints one JSON object as its LAST line of stdout (with ``--json`` that line is
all of stdout and the human-readable summary goes to stderr).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

app = typer.Typer(
    help="Evaluations: NAB scoring, forecasting against baselines.", no_args_is_help=True
)

_JSON_HELP = "human-readable lines go to stderr; stdout is the JSON line only"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _emit(lines: Sequence[str], payload: Mapping[str, Any], json_only: bool) -> None:
    stream = sys.stderr if json_only else sys.stdout
    for line in lines:
        print(line, file=stream)
    stream.flush()
    print(json.dumps(_clean(dict(payload)), allow_nan=False), flush=True)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Bad input ends the command with its reason and exit code 2, not a traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, KeyError, TypeError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _profiles(path: Path | None) -> dict[str, Any]:
    from vigil.bench.nab.corpus import read_profiles
    from vigil.bench.nab.scoring import NAB_PROFILES

    return read_profiles(path) if path is not None else dict(NAB_PROFILES)


def _profile_lines(results: Mapping[str, Any], header: str) -> list[str]:
    lines = [header]
    for name, r in results.items():
        how = "optimised" if r.optimised else "given"
        counts = r.counts()
        lines.append(
            f"  {name:20} score {r.normalised:7.2f}   threshold {r.threshold:.12g} ({how})   "
            f"raw {r.raw:8.3f}  TP {counts['tp']}  FP {counts['fp']}  FN {counts['fn']}"
        )
    return lines


def _published_lines() -> list[str]:
    from vigil.bench.report import NAB_SCOREBOARD

    board = ", ".join(f"{name} {score}" for name, score in NAB_SCOREBOARD)
    return [f"NAB published (standard, all 58 files): {board}"]


@app.command("nab-score")
def nab_score(
    results: Annotated[
        Path, typer.Option(help="results root: DIR/NAME/<category>/NAME_<file>.csv")
    ],
    labels: Annotated[Path, typer.Option(help="NAB combined_windows.json")],
    detector: Annotated[str, typer.Option(help="detector NAME (folder under --results)")],
    thresholds: Annotated[
        Path | None, typer.Option(help="NAB thresholds.json; default: optimise per profile")
    ] = None,
    profiles: Annotated[Path | None, typer.Option(help="NAB profiles.json; default NAB's")] = None,
    json_only: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Score a detector's NAB results files, at given or corpus-optimised thresholds."""
    from vigil.bench.nab.corpus import read_results_corpus, read_thresholds, read_windows
    from vigil.bench.nab.evaluation import ScoredFile, score_corpus

    with _clear_errors():
        series = read_results_corpus(results, detector)
        windows = read_windows(labels)
        fixed = read_thresholds(thresholds, detector) if thresholds is not None else None
        outcome = score_corpus(
            [ScoredFile(s.relative_path, s.timestamps, s.anomaly_scores) for s in series],
            windows,
            _profiles(profiles),
            fixed,
        )
    lines = _profile_lines(outcome, f"NAB scores of {detector!r} over {len(series)} files:")
    _emit(
        lines + _published_lines(),
        {
            "command": "nab-score",
            "detector": detector,
            "files": len(series),
            "scores": {name: r.normalised for name, r in outcome.items()},
            "thresholds": {name: r.threshold for name, r in outcome.items()},
            "threshold_source": "given" if fixed is not None else "optimised",
            "profiles": {name: r.summary() for name, r in outcome.items()},
        },
        json_only,
    )


def _pick_plots(files: Sequence[Any], windows: Mapping[str, Any], count: int) -> list[Any]:
    """A few series worth looking at: nyc_taxi first if present, then ones with windows."""
    ranked = sorted(
        files,
        key=lambda f: (
            "nyc_taxi" not in f.relative_path,
            not windows.get(f.relative_path),
            f.relative_path,
        ),
    )
    return ranked[:count]


@app.command("nab")
def nab(
    data: Annotated[Path, typer.Option(help="NAB data dir: DIR/<category>/<file>.csv")],
    labels: Annotated[Path, typer.Option(help="NAB combined_windows.json")],
    out: Annotated[Path, typer.Option(help="results root to write (NAB's results layout)")],
    detector: Annotated[str, typer.Option(help="registered detector name")] = "vigil",
    thresholds: Annotated[
        Path | None, typer.Option(help="NAB thresholds.json; default: optimise per profile")
    ] = None,
    profiles: Annotated[Path | None, typer.Option(help="NAB profiles.json; default NAB's")] = None,
    workers: Annotated[int, typer.Option(min=1, help="processes (one series each)")] = 2,
    report: Annotated[
        Path | None, typer.Option(help="write a Markdown report with plots here")
    ] = None,
    plots: Annotated[int, typer.Option(min=0, help="series plotted in the report")] = 4,
    progress: Annotated[bool, typer.Option(help="progress bar on stderr")] = True,
    json_only: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Run a detector over a NAB-style corpus, write NAB results files, and score them."""
    from vigil.bench.nab.corpus import read_data_series, read_thresholds, read_windows
    from vigil.bench.nab.evaluation import layouts_for, score_corpus
    from vigil.bench.nab.runner import run_corpus

    with _clear_errors():
        windows = read_windows(labels)
        fixed = read_thresholds(thresholds, detector) if thresholds is not None else None
        cost_profiles = _profiles(profiles)
        run = run_corpus(detector, data, windows, out, workers=workers, progress=progress)
        outcome = score_corpus(run.files, windows, cost_profiles, fixed)
    rate = run.rows / run.seconds if run.seconds > 0 else float("inf")
    lines = [
        f"ran {detector!r} on {len(run.files)} series ({run.rows} rows) in {run.seconds:.1f} s "
        f"({rate:.0f} rows/s, {workers} worker(s)); results in {out / detector}",
    ]
    if run.skipped:
        lines.append(
            f"skipped {len(run.skipped)} file(s) without labels: {', '.join(run.skipped[:5])}"
        )
    lines += _profile_lines(outcome, "NAB scores:") + _published_lines()
    payload: dict[str, Any] = {
        "command": "nab",
        "detector": detector,
        "files": len(run.files),
        "rows": run.rows,
        "seconds": round(run.seconds, 2),
        "scores": {name: r.normalised for name, r in outcome.items()},
        "thresholds": {name: r.threshold for name, r in outcome.items()},
        "threshold_source": "given" if fixed is not None else "optimised",
        "profiles": {name: r.summary() for name, r in outcome.items()},
        "skipped": run.skipped,
        "results": str(out / detector),
    }
    if report is not None:
        from vigil.bench.report import NabPlot, write_nab_report

        with _clear_errors():
            chosen = _pick_plots(run.files, windows, plots)
            layouts = layouts_for(chosen, windows)
            standard = outcome.get("standard") or next(iter(outcome.values()))
            plot_items = [
                NabPlot(
                    f.relative_path,
                    f.timestamps,
                    read_data_series(data / f.relative_path, f.relative_path).values,
                    f.anomaly_scores,
                    layouts[f.relative_path],
                    standard.threshold,
                )
                for f in chosen
            ]
            notes = [f"Run: {run.rows} rows in {run.seconds:.1f} s with {workers} worker(s)."]
            path = write_nab_report(report, detector, outcome, plot_items, notes)
        lines.append(f"report: {path}")
        payload["report"] = str(path)
    _emit(lines, payload, json_only)


def _windows_for(path: Path, windows: Mapping[str, Any] | None, x: Any) -> list[Any]:
    """The label windows of the file at ``path`` (matched by ``<category>/<file>.csv``), clipped
    to the stretch of time the file covers (it may be a slice of the NAB file)."""
    if windows is None or x is None or len(x) == 0:
        return []
    posix = path.resolve().as_posix()
    for relative, limits in windows.items():
        if posix.endswith("/" + relative):
            return [
                (max(start, x[0]), min(end, x[-1]))
                for start, end in limits
                if end >= x[0] and start <= x[-1]
            ]
    return []


@app.command("forecast")
def forecast(
    files: Annotated[list[Path], typer.Argument(help="CSV files, one series each")],
    column: Annotated[str, typer.Option(help="the column to forecast")] = "value",
    horizon: Annotated[int, typer.Option(min=1, help="steps ahead (K)")] = 5,
    season: Annotated[
        int | None,
        typer.Option(help="values per cycle for seasonal naive; 0 = none; default: detect"),
    ] = None,
    models: Annotated[
        str, typer.Option(help="comma-separated registered forecasters; default: all")
    ] = "",
    labels: Annotated[
        Path | None, typer.Option(help="NAB combined_windows.json, to shade windows in plots")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="write a Markdown report with plots here")
    ] = None,
    json_only: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Online (predict, then learn) forecasting of each file by every model and baseline."""
    from vigil.bench.detectors import ForecastSetup
    from vigil.bench.forecast_eval import (
        NYC_TAXI_5_STEP_NRMSE,
        build_forecasters,
        detect_season,
        evaluate_series,
        read_series_column,
    )
    from vigil.bench.nab.corpus import parse_timestamps, read_windows

    names = [n.strip() for n in models.split(",") if n.strip()]
    evaluations = []
    plot_inputs = []
    lines: list[str] = []
    with _clear_errors():
        windows = read_windows(labels) if labels is not None else None
        for path in files:
            values, stamps = read_series_column(path, column)
            if values.size <= horizon + 1:
                raise ValueError(f"{path}: {values.size} values, too few for horizon {horizon}")
            period = (season or None) if season is not None else detect_season(values)
            seconds = None
            if stamps is not None:  # the forecasters that use time see each value's own
                seconds = parse_timestamps(stamps).astype("datetime64[us]").astype(np.int64) / 1e6
            evaluation = evaluate_series(
                str(path),
                values,
                build_forecasters(ForecastSetup(horizon, period), names),
                horizon,
                period,
                timestamps=seconds,
            )
            evaluations.append(evaluation)
            plot_inputs.append((path, stamps))
            lines.append(f"{path}: {values.size} values, season {period or 'none'}")
            for model, steps in evaluation.metrics.items():
                parts = [
                    f"step {k}: NRMSE {_num(m.nrmse)} RMSE {_num(m.rmse)} MAE {_num(m.mae)} "
                    f"MAPE {_num(m.mape)}% dir {_num(m.directional_accuracy)}"
                    + (f" cover {_num(m.coverage)}" if m.coverage is not None else "")
                    for k, m in steps.items()
                ]
                lines.append(f"  {model:20} " + " | ".join(parts))
    if any("nyc_taxi" in e.name for e in evaluations):
        refs = ", ".join(f"{k} {v}" for k, v in NYC_TAXI_5_STEP_NRMSE.items())
        lines.append(f"reference (Numenta), NAB nyc_taxi 5 steps ahead, NRMSE: {refs}")
    payload: dict[str, Any] = {
        "command": "forecast",
        "horizon": horizon,
        "column": column,
        "files": {e.name: e.to_dict() for e in evaluations},
        "references": {"nyc_taxi_5_step_nrmse": NYC_TAXI_5_STEP_NRMSE},
    }
    if report is not None:
        from vigil.bench.nab.scoring import layout_file
        from vigil.bench.report import ForecastPlot, write_forecast_report

        with _clear_errors():
            plot_items = []
            for evaluation, (path, stamps) in zip(evaluations, plot_inputs, strict=True):
                x = _timestamps_or_none(parse_timestamps, stamps)
                limits = _windows_for(path, windows, x)
                layout = layout_file(x, limits) if limits and x is not None else None
                plot_items.append(ForecastPlot(evaluation, x, layout))
            path = write_forecast_report(report, plot_items)
        lines.append(f"report: {path}")
        payload["report"] = str(path)
    _emit(lines, payload, json_only)


def _timestamps_or_none(parse: Any, stamps: list[str] | None) -> Any:
    """Timestamps for the plot's x axis; row numbers when there are none or they do not parse."""
    if not stamps:
        return None
    try:
        return parse(stamps)
    except ValueError:
        return None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
