"""`vigil alerts …`: alert silences and queries."""

import typer

alerts_app = typer.Typer(help="Alerts: silences and queries.", no_args_is_help=True)
