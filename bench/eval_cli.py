"""`vigil eval …`: NAB scoring and forecast evaluation."""

import typer

app = typer.Typer(help="Evaluations: NAB scoring, forecasting against baselines.", no_args_is_help=True)
