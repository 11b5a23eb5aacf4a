"""The `vigil` command: local services, the worker, the demo, and every sub-tool."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vigil import __version__
from vigil.redaction import scrub
from vigil.settings import VigilSettings, public_settings, settings_or_exit, settings_secrets

app = typer.Typer(
    help="Vigil: streaming LSTM forecasting and anomaly alerts on Kafka and Redis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def fail(settings: VigilSettings | None, message: object, code: int = 1) -> typer.Exit:
    """Print one red line (secrets masked) for the caller to raise: no traceback for operators."""
    secrets = settings_secrets(settings) if settings is not None else []
    typer.secho(scrub(str(message), secrets), fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vigil {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Vigil: streaming LSTM forecasting and anomaly alerts on Kafka and Redis."""


@app.command()
def up() -> None:
    """Start local Kafka and Redis (unless VIGIL_KAFKA_BOOTSTRAP / VIGIL_REDIS_URL are set)."""
    from vigil import local_services
    from vigil.local_kafka import LocalServiceError

    settings = settings_or_exit()
    try:
        started = local_services.up(settings)
    except LocalServiceError as exc:
        raise fail(settings, exc) from None
    for item in local_services.status(settings):
        how = "started" if item.name in started else ("running" if item.managed else "external")
        typer.echo(f"{item.name:6} {item.address:28} {how}")


@app.command()
def down() -> None:
    """Stop the local Kafka and Redis that `vigil up` started."""
    from vigil import local_services

    stopped = local_services.down(settings_or_exit())
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
def status() -> None:
    """Show whether Kafka and Redis answer (passwords masked); exit 1 if one does not."""
    from vigil import local_services

    settings = settings_or_exit()
    rows = local_services.status(settings)
    for item in rows:
        state = "up" if item.answering else "DOWN"
        kind = "local" if item.managed else "external"
        typer.echo(scrub(f"{item.name:6} {item.address:28} {kind:8} {state}"))
    down = [item for item in rows if not item.answering]
    if down:
        raise fail(settings, down[0].problem)


@app.command("fetch-kafka")
def fetch_kafka() -> None:
    """Fetch the local Kafka broker's jars from Maven Central (cached)."""
    from vigil.local_kafka import LocalKafka, LocalServiceError

    settings = settings_or_exit()
    try:
        libs = LocalKafka(settings).fetch()
    except LocalServiceError as exc:
        raise fail(settings, exc) from None
    typer.echo(f"kafka jars: {libs}")


@app.command()
def worker(
    loglevel: Annotated[str, typer.Option(help="Faust log level")] = "",
    web_port: Annotated[int, typer.Option(help="web server port (0 = VIGIL_WEB_PORT)")] = 0,
    wait_s: Annotated[
        float, typer.Option(help="how long to wait for Kafka and Redis to answer before giving up")
    ] = 60.0,
) -> None:
    """Run a Faust worker: consume readings, predict, score, alert, train."""
    from vigil import local_services
    from vigil.local_kafka import LocalServiceError
    from vigil.stream.worker import run_worker

    settings = settings_or_exit()
    # A worker that cannot reach Kafka or Redis says where it looked, once, and stops; one
    # restarted during an outage (a crash, a rollout) waits for them for a while first.
    try:
        local_services.require_answering(settings, wait_s=wait_s)
    except LocalServiceError as exc:
        raise fail(settings, exc) from None
    run_worker(
        settings, loglevel=loglevel or settings.log_level, web_port=web_port or settings.web_port
    )


@app.command()
def demo(
    speedup: Annotated[float, typer.Option(help="replay speed-up; 0 = as fast as possible")] = 0.0,
    seconds: Annotated[float, typer.Option(help="stop after this long")] = 240.0,
    keep_up: Annotated[bool, typer.Option(help="leave Kafka and Redis running")] = True,
    exit_after: Annotated[
        bool,
        typer.Option("--exit", help="stop after the replay instead of keeping the web UI up"),
    ] = False,
) -> None:
    """Start local services, replay the shipped sample through a worker, print results live,
    then keep the worker and its web UI (the address is printed) up until Ctrl-C."""
    from vigil.stream.demo import run_demo

    settings = settings_or_exit()
    code = run_demo(
        settings, speedup=speedup, seconds=seconds, keep_up=keep_up, exit_after_replay=exit_after
    )
    sys.exit(code)


@app.command("settings")
def show_settings(
    table: Annotated[bool, typer.Option("--table", help="every variable with its default")] = False,
) -> None:
    """Print the effective settings as JSON (secrets masked), or the table of all variables."""
    import json

    if table:
        from vigil.settings_table import markdown_table

        typer.echo(markdown_table())
        return
    settings = settings_or_exit()
    text = json.dumps(public_settings(settings), indent=2)
    typer.echo(scrub(text, settings_secrets(settings)))


def _register_subcommands() -> None:
    from vigil.alerting.cli import alerting_app, alerts_app, webhooks_alias
    from vigil.bench.cli import app as bench_app
    from vigil.bench.eval_cli import app as eval_app
    from vigil.bench.tune_cli import app as tune_app
    from vigil.connectors.cli import app as connectors_app
    from vigil.dlq import app as dlq_app
    from vigil.models.cli import app as models_app
    from vigil.state_cli import app as state_app
    from vigil.tail import tail

    app.add_typer(models_app, name="models")
    app.add_typer(bench_app, name="bench")
    app.add_typer(eval_app, name="eval")
    app.add_typer(tune_app, name="tune")
    connectors_app.add_typer(webhooks_alias, name="webhooks")
    app.add_typer(connectors_app, name="connect")
    app.add_typer(alerting_app, name="alerting")
    app.add_typer(alerts_app, name="alerts")
    app.command("tail")(tail)
    app.add_typer(state_app, name="state")
    app.add_typer(dlq_app, name="dlq")


_register_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
