"""Connector commands: each source and sink is a `vigil` subcommand."""

import typer

app = typer.Typer(help="Sources into Kafka and sinks out of it.", no_args_is_help=True)
