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
) -> None:
    """Forecaster throughput: batched vs per-window, FLOP rate vs GEMM, stateful vs window."""
    import json

    from bench.inference import print_report, run_inference_bench

    result = run_inference_bench(
        batch=batch,
        seconds=seconds,
        threads=threads or None,
        progress=lambda m: typer.echo(f"… {m}", err=True),
    )
    print_report(result)
    if json_output:
        typer.echo(json.dumps(result.to_json()))
