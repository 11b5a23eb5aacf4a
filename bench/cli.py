"""`vigil bench …`: benchmarks that print figures measured side by side in one run."""

import typer

app = typer.Typer(help="Benchmarks (print figures; nothing is asserted).", no_args_is_help=True)
