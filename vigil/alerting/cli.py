"""Alerting's commands: ``vigil alerting run|status`` (the alerts consumer as its own process,
the delivery backlog) and ``vigil alerts list|silence …`` (the alert log, silences).
``vigil connect webhooks [status]`` is kept as an alias of ``vigil alerting run|status``."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from redis.asyncio import Redis

from vigil.settings import VigilSettings, settings_or_exit

T = TypeVar("T")

alerting_app = typer.Typer(
    help="Alert delivery: the alerts-topic consumer (grouping, silences, webhooks).",
    no_args_is_help=True,
)
alerts_app = typer.Typer(help="Alerts: the alert log and silences.", no_args_is_help=True)
silence_app = typer.Typer(
    help="Mute alerts that match key/group/severity for a while.", no_args_is_help=True
)
alerts_app.add_typer(silence_app, name="silence")
webhooks_alias = typer.Typer(help="Alias of `vigil alerting run` (and `status`).")


# ---- vigil alerting run | status ---------------------------------------------------------------
@alerting_app.command("run")
def run() -> None:
    """Consume the alerts topic (group {app_id}-alerting): log every alert, deliver webhooks,
    until Ctrl-C / SIGTERM. Set VIGIL_ALERTING__IN_WORKER=false on workers when this runs."""
    from vigil.alerting.payloads import endpoint_label

    settings = settings_or_exit()
    if not settings.webhooks:
        typer.echo("no webhooks configured (VIGIL_WEBHOOKS): alerts are logged, not delivered")
    for endpoint in settings.webhooks:
        typer.echo(f"delivering to {endpoint_label(endpoint)} (≥ {endpoint.min_severity}, "
                   f"keys {endpoint.key_pattern!r}, {endpoint.format})")  # fmt: skip
    asyncio.run(_run_until_signalled(settings))


async def _run_until_signalled(settings: VigilSettings) -> None:
    from vigil.alerting.consumer import consume_alerts

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await consume_alerts(settings, stop)


@alerting_app.command("status")
def status() -> None:
    """Pending deliveries per endpoint (waiting in Redis for an attempt or a retry)."""
    from vigil.alerting.delivery_queue import DeliveryQueue
    from vigil.alerting.payloads import endpoint_id, endpoint_label

    settings = settings_or_exit()

    async def counts(redis: Redis) -> list[tuple[str, int]]:
        queue = DeliveryQueue(redis, settings.app_id, retention_s=settings.alerting.retention_s)
        return [
            (endpoint_label(e), await queue.count_pending(endpoint_id(e)))
            for e in settings.webhooks
        ]

    rows = _with_redis(settings, counts)
    if not rows:
        typer.echo("no webhooks configured")
    for name, pending in rows:
        typer.echo(f"{pending:8d} pending  {name}")


@webhooks_alias.callback(invoke_without_command=True)
def webhooks(ctx: typer.Context) -> None:
    """Alias of `vigil alerting run`."""
    if ctx.invoked_subcommand is None:
        run()


webhooks_alias.command("status")(status)


# ---- vigil alerts list | silence ---------------------------------------------------------------
def _with_redis(settings: VigilSettings, action: Callable[[Redis], Awaitable[T]]) -> T:
    async def main() -> T:
        redis = Redis.from_url(settings.redis)
        try:
            return await action(redis)
        finally:
            await redis.aclose()

    return asyncio.run(main())


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@alerts_app.command("list")
def list_alerts(
    since: Annotated[str, typer.Option(help="how far back: 90s, 15m, 1h30m, 2d")] = "1h",
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="at most this many")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON alert per line")] = False,
) -> None:
    """Alerts logged recently (firing and resolved), oldest first."""
    from vigil.alerting.alert_log import AlertLog
    from vigil.alerting.silences import parse_duration

    try:
        start = time.time() - parse_duration(since)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    settings = settings_or_exit()
    maxlen = settings.stream.alert_stream_maxlen
    found = _with_redis(
        settings, lambda r: AlertLog(r, settings.app_id, maxlen=maxlen).since(start, limit)
    )
    for alert in found:
        if as_json:
            typer.echo(json.dumps(alert))
        else:
            typer.echo(f"{_when(alert['start'])}  {alert['status']:8}  {alert['severity']:8}  "
                       f"{alert['key']}  ({alert['group']}, score {alert['score']:.3f}, "
                       f"{alert['alert_id']})")  # fmt: skip
    if not found and not as_json:
        typer.echo("no alerts")


@silence_app.command("add")
def silence_add(
    comment: Annotated[str, typer.Option(help="why (shown in `silence list`)")],
    key: Annotated[str, typer.Option(help="glob on the series key, e.g. AAPL or sensor-*")] = "*",
    group: Annotated[str, typer.Option(help="glob on the model group")] = "*",
    severity: Annotated[str, typer.Option(help="glob on severity (info, warning, critical)")] = "*",
    duration: Annotated[str, typer.Option(help="how long: 90s, 15m, 1h30m, 2d")] = "1h",
    starts_in: Annotated[str, typer.Option(help="start later, e.g. 10m (default: now)")] = "",
    created_by: Annotated[str, typer.Option(help="who (default: the login name)")] = "",
) -> None:
    """Create a silence; prints its id."""
    from vigil.alerting.silences import SilenceStore, parse_duration
    from vigil.settings import AlertMatcher

    if (key, group, severity) == ("*", "*", "*"):
        raise _fail("refusing to silence everything: give --key, --group or --severity")
    try:
        seconds = parse_duration(duration)
        start = time.time() + (parse_duration(starts_in) if starts_in else 0.0)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    who = created_by or getpass.getuser()
    settings = settings_or_exit()

    async def add(redis: Redis) -> str:
        matchers = AlertMatcher(key=key, group=group, severity=severity)
        silence = await SilenceStore(redis, settings.app_id).create(
            matchers, duration_s=seconds, starts_at=start, comment=comment, created_by=who
        )
        return silence.id

    typer.echo(_with_redis(settings, add))


@silence_app.command("list")
def silence_list(
    show_all: Annotated[bool, typer.Option("--all", help="include expired silences")] = False,
) -> None:
    """Silences that are active or pending (and expired ones with --all)."""
    from vigil.alerting.silences import SilenceStore

    settings = settings_or_exit()
    now = time.time()
    silences = _with_redis(settings, lambda r: SilenceStore(r, settings.app_id).all(now))
    rows = [s for s in silences if show_all or s.state(now) != "expired"]
    if not rows:
        typer.echo("no silences")
        return
    typer.echo(f"{'ID':16}  {'STATE':8}  {'ENDS':19}  {'MATCHERS':40}  CREATED BY / COMMENT")
    for s in rows:
        m = s.matchers
        matchers = f"key={m.key} group={m.group} severity={m.severity}"
        typer.echo(f"{s.id:16}  {s.state(now):8}  {_when(s.ends_at):19}  {matchers:40}  "
                   f"{s.created_by}: {s.comment}")  # fmt: skip


@silence_app.command("expire")
def silence_expire(
    silence_id: Annotated[str, typer.Argument(help="id from `silence list`")],
) -> None:
    """End a silence now; alerts matching it are delivered again."""
    from vigil.alerting.silences import SilenceStore

    settings = settings_or_exit()
    if _with_redis(settings, lambda r: SilenceStore(r, settings.app_id).expire(silence_id)) is None:
        raise _fail(f"no silence {silence_id!r}", 1)
    typer.echo(f"expired {silence_id}")
