"""`vigil eval …`: NAB scoring and forecast evaluation.

Every command prints one JSON object as its LAST line of stdout (with ``--json`` that line is
all of stdout and the human-readable summary goes to stderr).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from vigil.bench.cli_output import clear_errors, emit

app = typer.Typer(
    help="Evaluations: NAB scoring, forecasting against baselines.", no_args_is_help=True
)

_JSON_HELP = "human-readable lines go to stderr; stdout is the JSON line only"


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

    with clear_errors():
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
    emit(
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

    with clear_errors():
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

        with clear_errors():
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
    emit(lines, payload, json_only)


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
    horizon: Annotated[
        int | None,
        typer.Option(min=1, help="steps ahead (K); default: the group config's, else 5"),
    ] = None,
    season: Annotated[
        int | None,
        typer.Option(help="values per cycle for seasonal naive; 0 = none; default: detect"),
    ] = None,
    models: Annotated[
        str, typer.Option(help="comma-separated registered forecasters; default: all")
    ] = "",
    delimiter: Annotated[str, typer.Option(help="field separator: ',' ';' or 'tab'")] = ",",
    group_config: Annotated[
        Path | None,
        typer.Option(help="JSON ModelGroup (as in VIGIL_GROUPS) for the vigil models"),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of Vigil's model (weights, replay buffer)")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="processes (one file each)")] = 1,
    labels: Annotated[
        Path | None, typer.Option(help="NAB combined_windows.json, to shade windows in plots")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="write a Markdown report with plots here")
    ] = None,
    progress: Annotated[bool, typer.Option(help="progress bar on stderr")] = True,
    json_only: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Online (predict, then learn) forecasting of each file by every model and baseline, and a
    summary across files."""
    from vigil.bench.forecast_eval import (
        DEFAULT_HORIZON,
        NYC_TAXI_5_STEP_NRMSE,
        ForecastJob,
        evaluate_files,
        read_group_config,
        summarise,
    )
    from vigil.bench.nab.corpus import read_windows

    names = tuple(n.strip() for n in models.split(",") if n.strip())
    with clear_errors():
        windows = read_windows(labels) if labels is not None else None
        group = None
        if group_config is not None:
            group, horizon = read_group_config(group_config, horizon)
        steps = horizon or DEFAULT_HORIZON
        group_json = None if group is None else group.model_dump(mode="json")
        jobs = [
            ForecastJob(path, column, steps, season, names, delimiter, group_json, seed)
            for path in files
        ]
        results = evaluate_files(jobs, workers, progress)
    evaluations = [r.evaluation for r in results]
    summary = summarise(evaluations)
    lines: list[str] = []
    for result in results:
        evaluation, rows = result.evaluation, result.series.rows
        lines.append(
            f"{evaluation.name}: {evaluation.values.size} values, "
            f"season {evaluation.season or 'none'}{_row_note(rows)}"
        )
        for model, steps_metrics in evaluation.metrics.items():
            parts = [
                f"step {k}: NRMSE {_num(m.nrmse)} RMSE {_num(m.rmse)} MAE {_num(m.mae)} "
                f"MAPE {_num(m.mape)}% dir {_num(m.directional_accuracy)}"
                + (f" cover {_num(m.coverage)}" if m.coverage is not None else "")
                for k, m in steps_metrics.items()
            ]
            lines.append(f"  {model:20} " + " | ".join(parts))
        for model, stream in evaluation.stream.items():
            beyond = ", ".join(f"step {k}: {v}" for k, v in stream.beyond_horizon.items())
            rejected = ", ".join(f"{code} {n}" for code, n in stream.rejected.items())
            lines.append(
                f"  {model:20} stream: {stream.gaps} gap(s), {stream.filled} missing step(s)"
                f" filled; rows beyond the horizon after a gap (not scored): {beyond}"
                + (f"; rejected: {rejected}" if rejected else "")
            )
    lines += _summary_lines(summary, len(evaluations))
    if any("nyc_taxi" in e.name for e in evaluations):
        refs = ", ".join(f"{k} {v}" for k, v in NYC_TAXI_5_STEP_NRMSE.items())
        lines.append(f"reference (Numenta), NAB nyc_taxi 5 steps ahead, NRMSE: {refs}")
    payload: dict[str, Any] = {
        "command": "forecast",
        "horizon": steps,
        "column": column,
        "delimiter": delimiter,
        "seed": seed,
        "workers": workers,
        "group": group_json,
        "files": {
            r.evaluation.name: {**r.evaluation.to_dict(), "rows": r.series.rows.to_dict()}
            for r in results
        },
        "summary": summary,
        "references": {"nyc_taxi_5_step_nrmse": NYC_TAXI_5_STEP_NRMSE},
    }
    if report is not None:
        from vigil.bench.nab.scoring import layout_file
        from vigil.bench.report import ForecastPlot, write_forecast_report

        with clear_errors():
            plot_items = []
            for result in results:
                x = result.series.times
                limits = _windows_for(result.series.path, windows, x)
                layout = layout_file(x, limits) if limits and x is not None else None
                plot_items.append(ForecastPlot(result.evaluation, x, layout))
            path = write_forecast_report(report, plot_items)
        lines.append(f"report: {path}")
        payload["report"] = str(path)
    emit(lines, payload, json_only)


def _row_note(rows: Any) -> str:
    """What reading did to a file's rows, when it did anything."""
    counted = [
        (rows.missing, "missing value(s)"),
        (rows.bad_timestamp, "row(s) with an unreadable time dropped"),
        (rows.duplicate_timestamp, "duplicate time(s) dropped"),
        (rows.out_of_order, "row(s) out of time order, sorted"),
    ]
    notes = [f"{count} {what}" for count, what in counted if count]
    return f" ({'; '.join(notes)})" if notes else ""


def _summary_lines(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], files: int) -> list[str]:
    """The figures across files: RMSE / persistence (mean, median, share of series below 1) and
    interval coverage (mean, median) per model and step."""
    lines = [f"summary over {files} series (RMSE / persistence on the same points):"]
    for model, steps in summary.items():
        parts = []
        for step, s in steps.items():
            figures = []
            if s["rmse_ratio_mean"] is not None:
                figures.append(
                    f"ratio mean {s['rmse_ratio_mean']:.4f} median {s['rmse_ratio_median']:.4f},"
                    f" beats persistence on {s['beats_baseline']:.0%} of {s['series']}"
                )
            if s["coverage_mean"] is not None:
                figures.append(
                    f"coverage mean {s['coverage_mean']:.3f} median {s['coverage_median']:.3f}"
                )
            parts.append(f"{step.replace('_', ' ')}: " + "; ".join(figures))
        lines.append(f"  {model:20} " + " | ".join(parts))
    if not any(s["rmse_ratio_mean"] is not None for st in summary.values() for s in st.values()):
        lines.append("  (ratios need persistence among --models)")
    return lines


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _register_anomalies() -> None:
    """`vigil eval anomalies` lives in its own module (bench/anomaly_cli.py)."""
    from vigil.bench.anomaly_cli import anomalies

    app.command("anomalies")(anomalies)


_register_anomalies()
