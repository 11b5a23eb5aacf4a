"""`vigil eval anomalies`: the command (the evaluation itself is :mod:`bench.anomaly_eval`).

Registered on the eval app by ``bench/eval_cli.py``; it keeps that app's conventions (human lines,
then one JSON object as the last line of stdout; with ``--json`` stdout is only that line; bad input
ends with ``error: <reason>`` and exit code 2), through :mod:`bench.cli_output`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from vigil.bench.anomaly_eval import DETECTORS, evaluate, labelled_files, summary_lines
from vigil.bench.cli_output import emit, fail

_JSON_HELP = "human-readable lines go to stderr; stdout is the JSON line only"


def anomalies(
    paths: Annotated[list[Path], typer.Argument(help="labelled CSV files or directories of them")],
    label_column: Annotated[str, typer.Option(help="per-row 0/1 label column")] = "is_anomaly",
    column: Annotated[str | None, typer.Option(help="one value column (univariate)")] = None,
    channels: Annotated[
        str, typer.Option(help="comma-separated value columns; default: all but time and label")
    ] = "",
    timestamp_column: Annotated[str, typer.Option(help="epoch seconds or dates")] = "timestamp",
    warmup_rows: Annotated[
        int, typer.Option(min=1, help="leading rows not scored: the known-normal reference")
    ] = 1000,
    delimiter: Annotated[str, typer.Option(help="CSV field separator")] = ",",
    group_config: Annotated[
        Path | None, typer.Option(help="a JSON model group (a VIGIL_GROUPS item) for Vigil")
    ] = None,
    detectors: Annotated[
        str, typer.Option(help=f"comma-separated, of: {', '.join(DETECTORS)}")
    ] = ",".join(DETECTORS),
    folds: Annotated[
        int, typer.Option(min=0, help="held-out thresholds: folds of files by name (0/1: none)")
    ] = 2,
    seed: Annotated[int, typer.Option(help="seed of Vigil's model and pysad's detectors")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="processes (one file and detector each)")] = 1,
    progress: Annotated[bool, typer.Option(help="progress bar on stderr")] = True,
    json_only: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Score detectors against per-row labels: precision, recall, F1, FAR, MAR, NAB-style."""
    if column and channels:
        raise fail("give --column or --channels, not both")
    names = [column] if column else [c.strip() for c in channels.split(",") if c.strip()]
    chosen = [d.strip() for d in detectors.split(",") if d.strip()]
    try:
        files = labelled_files(paths)
        config = None
        if group_config is not None:
            config = json.loads(group_config.read_text())
            if not isinstance(config, dict):
                raise ValueError(f"{group_config}: a JSON object (one group) is expected")
    except (OSError, ValueError) as exc:
        raise fail(exc) from None
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files) * len(chosen), desc="anomalies", unit="run", file=sys.stderr)
    try:
        outcome = evaluate(
            files,
            detectors=chosen,
            label_column=label_column,
            channels=names,
            timestamp_column=timestamp_column,
            delimiter=delimiter,
            warmup=warmup_rows,
            seed=seed,
            config=config,
            folds=folds,
            workers=workers,
            progress=bar.update if bar is not None else None,
        )
    except (ValueError, FileNotFoundError, KeyError, TypeError) as exc:
        raise fail(exc) from None
    finally:
        if bar is not None:
            bar.close()
    lines = summary_lines(outcome)
    lines.append(
        "flag: the detector's own decision; best: the threshold with the best pooled F1 over"
        " these files (in-sample); heldout: thresholds chosen on the other folds of files"
    )
    emit(lines, {"command": "anomalies", **outcome}, json_only)
