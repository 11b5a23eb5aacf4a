"""`vigil bench …`: benchmarks that print figures measured side by side in one run."""

from typing import Annotated

import typer

app = typer.Typer(help="Benchmarks (print figures; nothing is asserted).", no_args_is_help=True)


@app.command("inference")
def inference(
    json_output: Annotated[
        bool, typer.Option("--json", help="also print one JSON object as the last line")
    ] = False,
    batch: Annotated[int, typer.Option(help="windows per forward pass in batched mode")] = 256,
    seconds: Annotated[float, typer.Option(help="length of one timing repeat")] = 0.4,
    threads: Annotated[
        int, typer.Option(help="torch intra-op threads for the headline (0 = torch's default)")
    ] = 1,
    device: Annotated[
        str,
        typer.Option(
            help="cpu, cuda, or auto (CUDA when present), as VIGIL_DEVICE; cuda without a GPU"
            " is an error"
        ),
    ] = "cpu",
) -> None:
    """Forecaster throughput: batched vs per-window, FLOP rate vs GEMM, stateful vs window."""
    import json

    from vigil.bench.inference import print_report, run_inference_bench
    from vigil.models.config import ConfigError

    if device not in ("cpu", "cuda", "auto"):
        raise typer.BadParameter(
            f"must be cpu, cuda or auto, not {device!r}", param_hint="--device"
        )
    try:
        result = run_inference_bench(
            batch=batch,
            seconds=seconds,
            threads=threads or None,
            device=device,  # type: ignore[arg-type]
            progress=lambda m: typer.echo(f"… {m}", err=True),
        )
    except ConfigError as error:  # select_device: cuda asked for, none present
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    print_report(result)
    if json_output:
        typer.echo(json.dumps(result.to_json()))


@app.command("key-memory")
def key_memory(
    json_output: Annotated[
        bool, typer.Option("--json", help="also print one JSON object as the last line")
    ] = False,
    keys: Annotated[int, typer.Option(min=1, help="keys to hold")] = 2000,
    events: Annotated[int, typer.Option(min=1, help="readings per key (fill the window)")] = 200,
) -> None:
    """Bytes a key holds in a worker and in Redis, and a model version's weights (sizing)."""
    import json
    from dataclasses import asdict

    from vigil.bench.key_memory import measure_key_memory

    result = measure_key_memory(keys=keys, events_per_key=events)
    typer.echo(
        f"default group, {result.keys} keys x {result.events_per_key} readings: "
        f"{result.bytes_in_memory_per_key / 1024:.1f} KiB per key in memory, "
        f"{result.state_json_bytes_per_key / 1024:.1f} KiB of state per key in Redis; "
        f"model {result.model_parameters:,} parameters ({result.model_bytes / 1024:.0f} KiB)"
    )
    if json_output:
        typer.echo(json.dumps(asdict(result) | {"model_bytes": result.model_bytes}))


@app.command("pipeline")
def pipeline(
    json_output: Annotated[
        bool, typer.Option("--json", help="also print one JSON object as the last line")
    ] = False,
    keys: Annotated[int, typer.Option(help="series (Kafka keys) in the traffic")] = 32,
    events_per_key: Annotated[int, typer.Option(help="backlog readings per key")] = 600,
    latency_seconds: Annotated[float, typer.Option(help="length of the half-load phase")] = 20.0,
    overload_seconds: Annotated[float, typer.Option(help="length of each overload phase")] = 12.0,
    small_model: Annotated[
        bool, typer.Option("--small-model", help="also measure a small model's max throughput")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1, help="also drain the backlog with this many workers side by side (scale-out)"
        ),
    ] = 1,
    training: Annotated[
        bool, typer.Option(help="online fine-tuning on (the default group's setting) or off")
    ] = True,
    inference: Annotated[
        str,
        typer.Option(help="the group's inference mode: window, or stateful (one step per event)"),
    ] = "window",
) -> None:
    """End to end on the local broker: max events/s vs a bare Faust passthrough, latency at half
    load, and overload at 1.5x and 2x capacity (in-worker latency, pauses, lag, nothing lost)."""
    import json

    from vigil.bench.pipeline import (
        PipelinePlan,
        print_report,
        run_pipeline_bench,
        small_model_group,
    )
    from vigil.settings import ModelGroup, TrainingConfig, settings_or_exit

    if inference not in ("window", "stateful"):
        typer.echo(f"--inference must be window or stateful, got {inference!r}", err=True)
        raise typer.Exit(2)
    plan = PipelinePlan(
        group=ModelGroup(
            name="default", inference=inference, training=TrainingConfig(enabled=training)
        ),
        keys=keys,
        events_per_key=events_per_key,
        latency_seconds=latency_seconds,
        overload_seconds=overload_seconds,
        small_group=small_model_group() if small_model else None,
        workers=workers,
    )
    result = run_pipeline_bench(
        settings_or_exit(), plan, progress=lambda m: typer.echo(f"… {m}", err=True)
    )
    print_report(result)
    if json_output:
        typer.echo(json.dumps(result.to_json()))


@app.command("drill")
def drill(
    name: Annotated[str, typer.Argument(help="a drill's name, or 'all'")] = "all",
    json_output: Annotated[
        bool, typer.Option("--json", help="also print one JSON object per drill")
    ] = False,
    short: Annotated[bool, typer.Option(help="the short forms the tests run")] = False,
    workdir: Annotated[str, typer.Option(help="logs of the drills' workers")] = "bench/out/drills",
) -> None:
    """Fault drills against the real broker and Redis: lost, dropped, duplicated, dead-lettered,
    wedged and recovery time per drill (see docs/reliability.md)."""
    import asyncio
    import json
    from pathlib import Path

    from vigil.bench.drills import DRILLS, print_table
    from vigil.settings import settings_or_exit

    if name != "all" and name not in DRILLS:
        typer.echo(f"unknown drill {name!r}; one of: all, {', '.join(DRILLS)}", err=True)
        raise typer.Exit(2)
    settings = settings_or_exit()
    names = list(DRILLS) if name == "all" else [name]
    outcomes = []
    for drill_name in names:
        typer.echo(f"… {drill_name}", err=True)
        outcome = asyncio.run(DRILLS[drill_name](settings, Path(workdir), short))
        outcomes.append(outcome)
        if json_output:
            typer.echo(json.dumps(outcome.to_json()))
    print_table(outcomes)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)
