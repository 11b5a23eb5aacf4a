"""`vigil connect webhooks`: run the alert → webhook dispatcher, or show its backlog."""

from __future__ import annotations

import asyncio

import typer

from vigil.settings import VigilSettings

webhooks_app = typer.Typer(
    help="Deliver alerts from the alerts topic to the configured webhooks (VIGIL_WEBHOOKS)."
)


def _settings() -> VigilSettings:
    from vigil.cli import settings_or_exit  # late: vigil.cli imports this module's parent app

    return settings_or_exit()


@webhooks_app.callback(invoke_without_command=True)
def run(ctx: typer.Context) -> None:
    """Consume the alerts topic (group {app_id}-webhooks) and deliver until Ctrl-C / SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    from connectors.alert_dispatch import run_webhooks
    from connectors.webhooks import endpoint_label

    settings = _settings()
    if not settings.webhooks:
        typer.secho("no webhooks configured: set VIGIL_WEBHOOKS", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    for endpoint in settings.webhooks:
        typer.echo(f"delivering to {endpoint_label(endpoint)} (≥ {endpoint.min_severity}, "
                   f"keys {endpoint.key_pattern!r}, {endpoint.format})")  # fmt: skip
    run_webhooks(settings)


@webhooks_app.command()
def status() -> None:
    """Pending deliveries per endpoint (waiting in Redis for an attempt or a retry)."""
    from redis.asyncio import Redis

    from connectors.webhooks import DeliveryQueue, endpoint_id, endpoint_label

    settings = _settings()

    async def counts() -> list[tuple[str, int]]:
        redis = Redis.from_url(settings.redis)
        try:
            queue = DeliveryQueue(redis, settings.app_id, retention_s=settings.alerting.retention_s)
            return [
                (endpoint_label(e), await queue.count_pending(endpoint_id(e)))
                for e in settings.webhooks
            ]
        finally:
            await redis.aclose()

    rows = asyncio.run(counts())
    if not rows:
        typer.echo("no webhooks configured")
    for name, pending in rows:
        typer.echo(f"{pending:8d} pending  {name}")
