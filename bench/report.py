"""Markdown reports with PNG plots for ``vigil eval nab`` and ``vigil eval forecast``.

Plots use matplotlib's Agg backend (files only, no display); a report plots a few series, not
the whole corpus, so that writing it stays quick.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vigil.bench.forecast_eval import NYC_TAXI_5_STEP_NRMSE, SeriesEvaluation
from vigil.bench.nab.evaluation import ProfileResult
from vigil.bench.nab.scoring import FileLayout

__all__ = [
    "NAB_SCOREBOARD",
    "ForecastPlot",
    "NabPlot",
    "write_forecast_report",
    "write_nab_report",
]

# NAB's published scoreboard: standard profile, normalised, over all 58 files.
NAB_SCOREBOARD: list[tuple[str, float]] = [
    ("Numenta HTM", 70.1),
    ("CAD OSE", 69.9),
    ("KNN CAD", 58.0),
    ("Random Cut Forest", 51.7),
    ("Twitter ADVec", 47.1),
    ("Windowed Gaussian", 39.6),
    ("Random", 11.0),
]

_PLOTTED_POINTS = 600  # a forecast plot shows this many points: a readable stretch, not all


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name).strip("_")


def _shade_windows(axis: Any, x: npt.NDArray[Any], layout: FileLayout | None) -> None:
    if layout is None:
        return
    if layout.probation > 0:
        axis.axvspan(x[0], x[min(layout.probation, x.size) - 1], color="0.85", lw=0)
    for span in layout.spans:
        axis.axvspan(x[span.first], x[span.last], color="tab:orange", alpha=0.25, lw=0)


@dataclass(frozen=True)
class NabPlot:
    """One series of a NAB run, to draw: values, scores, windows, detection threshold."""

    relative_path: str
    timestamps: npt.NDArray[np.datetime64]
    values: npt.NDArray[np.float64]
    anomaly_scores: npt.NDArray[np.float64]
    layout: FileLayout
    threshold: float


def _plot_nab_series(plot: NabPlot, path: Path) -> None:
    plt = _pyplot()
    x = plot.timestamps
    detected = (plot.anomaly_scores >= plot.threshold) & (
        np.arange(x.size) >= plot.layout.probation
    )
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 5), sharex=True, height_ratios=[3, 1])
    _shade_windows(top, x, plot.layout)
    top.plot(x, plot.values, lw=0.7, color="tab:blue", label="value")
    top.scatter(x[detected], plot.values[detected], color="red", s=18, zorder=3, label="detection")
    top.set_title(f"{plot.relative_path}  (orange: labelled windows, grey: probation)")
    top.legend(loc="upper left", fontsize=8)
    bottom.plot(x, plot.anomaly_scores, lw=0.6, color="tab:purple")
    bottom.axhline(plot.threshold, color="red", lw=0.8, ls="--")
    bottom.set_ylabel("anomaly score")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def write_nab_report(
    out_dir: Path,
    detector: str,
    results: Mapping[str, ProfileResult],
    plots: Sequence[NabPlot],
    notes: Sequence[str] = (),
) -> Path:
    """Write ``out_dir/nab_<detector>.md`` and its PNGs; return the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n_files = len(next(iter(results.values())).files) if results else 0
    lines = [f"# NAB evaluation: `{detector}`", ""]
    lines += [f"Files scored: {n_files}.", *notes, ""]
    lines += ["## Normalised scores", ""]
    lines += _table(
        ["profile", "score", "threshold", "how chosen", "raw", "TP", "FP", "FN", "TN"],
        [
            [
                name,
                f"{r.normalised:.1f}",
                f"{r.threshold:.12g}",
                "optimised over these files" if r.optimised else "given",
                f"{r.raw:.3f}",
                *(r.counts()[k] for k in ("tp", "fp", "fn", "tn")),
            ]
            for name, r in results.items()
        ],
    )
    standard = results.get("standard")
    lines += ["", "## Beside NAB's published scoreboard (standard profile)", ""]
    board = [[name, f"{score:.1f}", "all 58 NAB files"] for name, score in NAB_SCOREBOARD]
    if standard is not None:
        board.append(
            [f"**{detector}** (this run)", f"**{standard.normalised:.1f}**", f"{n_files} files"]
        )
        board.sort(key=lambda row: -float(row[1].strip("*")))
    lines += _table(["detector", "score", "over"], board)
    lines += [
        "",
        "NAB normalises over the files scored (null detector 0, perfect 100), so a subset's "
        "figure is comparable in kind, not digit for digit, with the 58-file board.",
        "",
    ]
    if plots:
        lines += ["## Series", ""]
    for plot in plots:
        png = f"nab_{_slug(detector)}_{_slug(plot.relative_path)}.png"
        _plot_nab_series(plot, out_dir / png)
        lines += [f"### {plot.relative_path}", "", f"![{plot.relative_path}]({png})", ""]
    path = out_dir / f"nab_{_slug(detector)}.md"
    path.write_text("\n".join(lines))
    return path


@dataclass(frozen=True)
class ForecastPlot:
    """What to draw beside an evaluation: x positions (timestamps if known) and label windows."""

    evaluation: SeriesEvaluation
    timestamps: npt.NDArray[np.datetime64] | None
    layout: FileLayout | None = None


def _plot_forecasts(plot: ForecastPlot, path: Path) -> None:
    plt = _pyplot()
    evaluation = plot.evaluation
    n = evaluation.values.size
    x = plot.timestamps if plot.timestamps is not None else np.arange(n)
    start, stop = _view(n, plot.layout)
    steps = sorted({1, evaluation.horizon})
    fig, axes = plt.subplots(
        len(steps), 1, figsize=(12, 3.6 * len(steps)), sharex=True, squeeze=False
    )
    for axis, k in zip(axes[:, 0], steps, strict=True):
        _shade_windows(axis, x, plot.layout)
        # the forecast of y[t] made k steps earlier sits at row t - k + 1, column k - 1
        targets = np.arange(max(start, k - 1), stop)
        axis.plot(x[targets], evaluation.values[targets], color="black", lw=0.8, label="actual")
        for name, trace in evaluation.traces.items():
            forecast = trace.forecasts[targets - k + 1, k - 1]
            axis.plot(x[targets], forecast, lw=0.7, label=name)
            if trace.lower is not None and trace.upper is not None:
                low = trace.lower[targets - k + 1, k - 1]
                high = trace.upper[targets - k + 1, k - 1]
                axis.fill_between(x[targets], low, high, alpha=0.2, lw=0)
                actual = evaluation.values[targets]
                outside = (actual < low) | (actual > high)
                axis.scatter(x[targets][outside], actual[outside], color="red", s=12, zorder=3)
        axis.set_title(
            f"{evaluation.name}: {k}-step-ahead forecasts"
            + (" (orange: labelled anomaly windows)" if plot.layout is not None else "")
        )
        axis.legend(loc="upper left", fontsize=8)
        axis.set_xlim(x[start], x[stop - 1])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _view(n: int, layout: FileLayout | None) -> tuple[int, int]:
    """Rows to draw: around the last labelled window if there is one, else the end."""
    if layout is not None and layout.spans:
        centre = (layout.spans[-1].first + layout.spans[-1].last) // 2
        start = max(0, min(centre - _PLOTTED_POINTS // 2, n - _PLOTTED_POINTS))
    else:
        start = max(0, n - _PLOTTED_POINTS)
    return start, min(n, start + _PLOTTED_POINTS)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def write_forecast_report(out_dir: Path, plots: Sequence[ForecastPlot], max_plots: int = 3) -> Path:
    """Write ``out_dir/forecast.md`` with a metrics table per series and a few plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Online forecast evaluation", ""]
    lines += [
        "Every model forecasts, then learns, one value at a time; all models of a series are "
        "scored on the same points. NRMSE = RMSE / std(actual values scored).",
        "",
    ]
    for i, plot in enumerate(plots):
        evaluation = plot.evaluation
        lines += [f"## {evaluation.name}", ""]
        lines += [f"{evaluation.values.size} values, season: {evaluation.season or 'none'}.", ""]
        rows = []
        for model, steps in evaluation.metrics.items():
            for k, m in steps.items():
                rows.append(
                    [
                        model,
                        k,
                        m.n,
                        _fmt(m.rmse),
                        _fmt(m.mae),
                        _fmt(m.mape),
                        _fmt(m.nrmse, 3),
                        _fmt(m.directional_accuracy, 3),
                        _fmt(m.coverage, 3),
                        _fmt(m.mean_width),
                    ]
                )
        lines += _table(
            [
                "model",
                "step",
                "n",
                "RMSE",
                "MAE",
                "MAPE %",
                "NRMSE",
                "direction",
                "coverage",
                "width",
            ],
            rows,
        )
        if "nyc_taxi" in evaluation.name and evaluation.horizon == 5:
            lines += ["", "Numenta's published NRMSE on nyc_taxi, 5 steps ahead:", ""]
            lines += _table(["model", "NRMSE"], [[k, v] for k, v in NYC_TAXI_5_STEP_NRMSE.items()])
        if i < max_plots:
            png = f"forecast_{_slug(evaluation.name)}.png"
            _plot_forecasts(plot, out_dir / png)
            lines += ["", f"![{evaluation.name}]({png})"]
        lines.append("")
    path = out_dir / "forecast.md"
    path.write_text("\n".join(lines))
    return path
