"""`vigil tune …`: search a model group's settings on recorded series, cross-validated by series.

Like `vigil eval …`, every command prints one JSON object as its LAST line of stdout (with
``--json`` that line is all of stdout; the human-readable lines go to stderr), and bad input ends
with ``error: <reason>`` and exit code 2.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from vigil.bench.cli_output import clear_errors, emit

if TYPE_CHECKING:
    from vigil.bench.tune import Objective, SearchSpace, Series, TuneOutcome
    from vigil.settings import ModelGroup

app = typer.Typer(
    help="Search a model group's settings by replaying history (optuna TPE, cross-validated"
    " by series); write a group config for VIGIL_GROUPS.",
    no_args_is_help=True,
)

_JSON_HELP = "human-readable lines go to stderr; stdout is the JSON line only"


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _params_text(params: Mapping[str, Any]) -> str:
    def show(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={show(v)}" for k, v in params.items())


def _report(
    outcome: TuneOutcome,
    *,
    objective: Objective,
    figure: str,
    series: Sequence[Series],
    out: Path | None,
    seconds: float,
    extra: Mapping[str, Any],
) -> tuple[list[str], dict[str, Any]]:
    better = "higher" if objective.direction == "maximize" else "lower"
    lines = [
        f"{figure} ({better} is better); protocol {outcome.protocol}, {len(outcome.folds)}"
        f" search(es) over {len(series)} series; {outcome.replayed} series replays computed"
        f" in {seconds:.0f} s",
        "",
        "search             train test  in-sample  held-out | default: in-sample  held-out"
        "   chosen",
    ]
    for fold in outcome.folds:
        lines.append(
            f"{fold.split.name:18} {len(fold.split.train):5} {len(fold.split.test):4}"
            f"  {_figure(fold.in_sample):>9} {_figure(fold.held_out):>9} |"
            f" {_figure(fold.reference_in_sample):>18} {_figure(fold.reference_held_out):>9}"
            f"   {_params_text(fold.params)}"
        )
    final = outcome.folds[-1]
    held_how = (
        "nested: each fold scored by a search that never saw it, pooled"
        if outcome.protocol == "nested"
        else f"the {len(final.split.test)} series of {final.split.name} the search never saw"
    )
    lines += [
        "",
        f"best configuration: in-sample {_figure(final.in_sample)}"
        f" (its {len(final.split.train)} search series), held-out {_figure(outcome.held_out)}"
        f" ({held_how})",
        f"default (the base group): in-sample {_figure(final.reference_in_sample)},"
        f" held-out {_figure(outcome.reference_held_out)}",
    ]
    if outcome.threshold is not None:
        lines.append(
            f"NAB threshold chosen on the search series: {outcome.threshold:.12g}"
            " (detector.threshold below is the searched incident threshold)"
        )
    lines += ["", f"top trials of {final.split.name}:"]
    for trial in outcome.top:
        lines.append(f"  #{trial.number:<3} {_figure(trial.value)}  {_params_text(trial.params)}")
    group_json = outcome.group.model_dump(mode="json")
    lines += ["", "group config (VIGIL_GROUPS takes a list of these):"]
    lines += json.dumps(group_json, indent=2).splitlines()
    if out is not None:
        lines.append(f"written to {out}")
    payload = {
        "command": "tune",
        "objective": outcome.objective,
        "figure": figure,
        "direction": objective.direction,
        "protocol": outcome.protocol,
        **extra,
        "series": len(series),
        "replays": outcome.replayed,
        "seconds": round(seconds, 1),
        "best": {
            "params": outcome.best.params,
            "in_sample": final.in_sample,
            "held_out": outcome.held_out,
            "threshold": outcome.threshold,
        },
        "default": {
            "in_sample": final.reference_in_sample,
            "held_out": outcome.reference_held_out,
        },
        "searches": [
            {
                "name": f.split.name,
                "train": f.split.train,
                "test": f.split.test,
                "params": f.params,
                "in_sample": f.in_sample,
                "held_out": f.held_out,
                "threshold": f.threshold,
                "default_in_sample": f.reference_in_sample,
                "default_held_out": f.reference_held_out,
            }
            for f in outcome.folds
        ],
        "top": [{"number": t.number, "value": t.value, "params": t.params} for t in outcome.top],
        "group": group_json,
        "out": str(out) if out is not None else None,
    }
    return lines, payload


def _check_name(name: str) -> None:
    from pydantic import ValidationError

    from vigil.settings import ModelGroup

    try:
        ModelGroup(name=name)
    except ValidationError:
        raise ValueError(f"--name {name!r}: lower-case letters, digits, - and _") from None


def _tune(
    *,
    objective: Objective,
    series: Sequence[Series],
    space: SearchSpace,
    base: ModelGroup,
    figure: str,
    options: Mapping[str, Any],
    extra: Mapping[str, Any],
    json_only: bool,
) -> None:
    from vigil.bench.tune import run_search

    started = time.perf_counter()
    out: Path | None = options["out"]
    with clear_errors():
        outcome = run_search(
            objective=objective,
            series=series,
            space=space,
            base=base,
            name=options["name"],
            trials=options["trials"],
            folds=options["folds"],
            protocol=options["protocol"],
            seed=options["seed"],
            workers=options["workers"],
            study_dir=options["study_dir"],
            startup_trials=options["startup_trials"],
            top=options["top"],
            setup=extra,
            progress=options["progress"],
        )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(outcome.group.model_dump(mode="json"), indent=2) + "\n")
    lines, payload = _report(
        outcome,
        objective=objective,
        figure=figure,
        series=series,
        out=out,
        seconds=time.perf_counter() - started,
        extra=extra,
    )
    emit(lines, payload, json_only)


# Options both commands share (typer reads them from each signature).
_Space = Annotated[
    Path | None,
    typer.Option(help="search space, JSON or TOML (.toml); default: the built-in space"),
]
_Trials = Annotated[int, typer.Option(min=1, help="completed trials per search")]
_Folds = Annotated[int, typer.Option(min=2, help="folds by series (file i in fold i mod k)")]
_Protocol = Annotated[
    str,
    typer.Option(
        help="nested: a search without each fold, scored on it, plus one on all series;"
        " holdout: one search on folds 0..k-2, scored on fold k-1"
    ),
]
_Seed = Annotated[int, typer.Option(help="seeds the sampler and the models")]
_Workers = Annotated[int, typer.Option(min=1, help="processes replaying a trial's series")]
_StudyDir = Annotated[
    Path | None,
    typer.Option(help="keep the studies and replays here; rerunning the command resumes"),
]
_MaxFiles = Annotated[
    int | None, typer.Option(min=1, help="only N series, spread over the sorted names")
]
_MaxRows = Annotated[int | None, typer.Option(min=10, help="only the first N rows of each series")]
_Startup = Annotated[int, typer.Option(min=1, help="random trials before TPE models the results")]
_Top = Annotated[int, typer.Option(min=1, help="rows in the table of top trials")]
_Name = Annotated[str, typer.Option(help="name of the group written out")]
_Out = Annotated[Path | None, typer.Option(help="write the group config JSON here")]
_Progress = Annotated[bool, typer.Option(help="progress bar on stderr")]
_Json = Annotated[bool, typer.Option("--json", help=_JSON_HELP)]


def _protocol(value: str) -> Literal["nested", "holdout"]:
    if value == "nested":
        return "nested"
    if value == "holdout":
        return "holdout"
    raise ValueError(f"--protocol must be nested or holdout, not {value!r}")


@app.command("nab")
def tune_nab(
    data: Annotated[Path, typer.Option(help="NAB data dir: DIR/<category>/<file>.csv")],
    labels: Annotated[Path, typer.Option(help="NAB combined_windows.json")],
    profile: Annotated[str, typer.Option(help="NAB profile whose score is maximised")] = (
        "standard"
    ),
    space: _Space = None,
    trials: _Trials = 12,
    folds: _Folds = 3,
    protocol: _Protocol = "nested",
    seed: _Seed = 0,
    workers: _Workers = 2,
    study_dir: _StudyDir = None,
    max_files: _MaxFiles = None,
    max_rows: _MaxRows = None,
    startup_trials: _Startup = 10,
    top: _Top = 5,
    name: _Name = "tuned",
    out: _Out = None,
    progress: _Progress = True,
    json_only: _Json = False,
) -> None:
    """Maximise NAB's score of `vigil` (the stream's detector) on a NAB-format corpus."""
    from vigil.bench.nab.corpus import read_windows
    from vigil.bench.nab.scoring import NAB_PROFILES
    from vigil.bench.replay_harness import nab_group
    from vigil.bench.tune import DEFAULT_NAB_SPACE, NabObjective, load_space, read_nab_series

    with clear_errors():
        if profile not in NAB_PROFILES:
            raise ValueError(f"unknown profile {profile!r}; NAB's: {', '.join(NAB_PROFILES)}")
        _check_name(name)
        base = nab_group()
        search_space = load_space(space, DEFAULT_NAB_SPACE, base)
        windows = read_windows(labels)
        series, clipped, _skipped = read_nab_series(data, windows, max_files, max_rows)
        objective = NabObjective(series, clipped, NAB_PROFILES[profile])
        options = {
            "name": name, "trials": trials, "folds": folds, "protocol": _protocol(protocol),
            "seed": seed, "workers": workers, "study_dir": study_dir,
            "startup_trials": startup_trials, "top": top, "progress": progress, "out": out,
        }  # fmt: skip
    _tune(
        objective=objective,
        series=series,
        space=search_space,
        base=base,
        figure=f"NAB {profile} score",
        options=options,
        extra={"profile": profile, "max_rows": max_rows, "max_files": max_files},
        json_only=json_only,
    )


@app.command("forecast")
def tune_forecast(
    files: Annotated[list[Path], typer.Argument(help="CSV files, one series each")],
    column: Annotated[str, typer.Option(help="the column to forecast")] = "value",
    horizon: Annotated[int, typer.Option(min=1, help="steps ahead; NRMSE at this step")] = 5,
    space: _Space = None,
    trials: _Trials = 12,
    folds: _Folds = 3,
    protocol: _Protocol = "nested",
    seed: _Seed = 0,
    workers: _Workers = 2,
    study_dir: _StudyDir = None,
    max_files: _MaxFiles = None,
    max_rows: _MaxRows = None,
    startup_trials: _Startup = 10,
    top: _Top = 5,
    name: _Name = "tuned",
    out: _Out = None,
    progress: _Progress = True,
    json_only: _Json = False,
) -> None:
    """Minimise the mean NRMSE of `vigil` (the stream's forecaster) over CSV series."""
    from vigil.bench.replay_harness import forecast_group
    from vigil.bench.tune import (
        DEFAULT_FORECAST_SPACE,
        ForecastObjective,
        load_space,
        read_forecast_series,
    )

    with clear_errors():
        _check_name(name)
        base = forecast_group(horizon)
        search_space = load_space(space, DEFAULT_FORECAST_SPACE, base)
        series = read_forecast_series(files, column, max_files, max_rows)
        for s in series:
            if s.values.size <= horizon + base.model.window:
                raise ValueError(f"{s.name}: {s.values.size} values, too few to forecast")
        options = {
            "name": name, "trials": trials, "folds": folds, "protocol": _protocol(protocol),
            "seed": seed, "workers": workers, "study_dir": study_dir,
            "startup_trials": startup_trials, "top": top, "progress": progress, "out": out,
        }  # fmt: skip
    _tune(
        objective=ForecastObjective(horizon),
        series=series,
        space=search_space,
        base=base,
        figure=f"NRMSE at step {horizon}",
        options=options,
        extra={"column": column, "horizon": horizon, "max_rows": max_rows, "max_files": max_files},
        json_only=json_only,
    )
