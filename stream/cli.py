"""`vigil alerts …`: alert silences and queries."""

from __future__ import annotations

import asyncio
import getpass
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer

alerts_app = typer.Typer(help="Alerts: silences and queries.", no_args_is_help=True)
silence_app = typer.Typer(
    help="Mute alerts that match key/group/severity for a while.", no_args_is_help=True
)
alerts_app.add_typer(silence_app, name="silence")

T = TypeVar("T")


def _with_store(action: Callable[..., Awaitable[T]]) -> T:
    """Run ``action(store)`` against the configured Redis and app id."""
    from redis.asyncio import Redis

    from connectors.alert_routing import SilenceStore
    from vigil.cli import settings_or_exit  # late: vigil.cli imports this module

    settings = settings_or_exit()

    async def run() -> T:
        redis = Redis.from_url(settings.redis)
        try:
            return await action(SilenceStore(redis, settings.app_id))
        finally:
            await redis.aclose()

    return asyncio.run(run())


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


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
    from connectors.alert_routing import AlertMatcher, SilenceStore, parse_duration

    if (key, group, severity) == ("*", "*", "*"):
        typer.secho("refusing to silence everything: give --key, --group or --severity", err=True,
                    fg=typer.colors.RED)  # fmt: skip
        raise typer.Exit(2)
    try:
        seconds = parse_duration(duration)
        start = time.time() + (parse_duration(starts_in) if starts_in else 0.0)
    except ValueError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    who = created_by or getpass.getuser()

    async def add(store: SilenceStore) -> str:
        matchers = AlertMatcher(key=key, group=group, severity=severity)
        silence = await store.create(
            matchers, duration_s=seconds, starts_at=start, comment=comment, created_by=who
        )
        return silence.id

    silence_id = _with_store(add)
    typer.echo(silence_id)


@silence_app.command("list")
def silence_list(
    show_all: Annotated[bool, typer.Option("--all", help="include expired silences")] = False,
) -> None:
    """Silences that are active or pending (and expired ones with --all)."""
    from connectors.alert_routing import Silence, SilenceStore

    async def fetch(store: SilenceStore) -> list[Silence]:
        return await store.all()

    now = time.time()
    rows = [s for s in _with_store(fetch) if show_all or s.state(now) != "expired"]
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
    from connectors.alert_routing import Silence, SilenceStore

    async def expire(store: SilenceStore) -> Silence | None:
        return await store.expire(silence_id)

    if _with_store(expire) is None:
        typer.secho(f"no silence {silence_id!r}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"expired {silence_id}")
