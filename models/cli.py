"""`vigil models …`: the model registry from the command line."""

import typer

app = typer.Typer(help="Model registry: list versions, promote one, roll back.", no_args_is_help=True)
