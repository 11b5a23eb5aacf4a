"""`vigil models …`: the model registry from the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from vigil.models.registry import ModelRegistry, VersionInfo

app = typer.Typer(
    help="Model registry: list versions, promote one, roll back.", no_args_is_help=True
)

GroupOption = Annotated[
    str | None, typer.Option("--group", "-g", help="model group (default: see each command)")
]


@contextmanager
def _registry() -> Iterator[tuple[ModelRegistry, str]]:
    """The registry of the configured app, and the first configured group as a default.
    Registry and Redis errors become a red message and exit code 1."""
    import redis

    from vigil.models.registry import ModelRegistry, RegistryError
    from vigil.settings import settings_or_exit

    settings = settings_or_exit()
    client = redis.Redis.from_url(settings.redis, socket_connect_timeout=5)
    try:
        yield ModelRegistry(client, settings.app_id), settings.groups[0].name
    except RegistryError as exc:
        _fail(str(exc))
    except redis.RedisError as exc:
        _fail(f"cannot use Redis at {settings.redis}: {exc}")
    finally:
        client.close()


def _fail(message: str) -> NoReturn:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command("list")
def list_versions(
    group: GroupOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List registered versions (all groups unless --group), oldest first; * marks live."""
    with _registry() as (registry, _):
        groups = [group] if group else registry.groups()
        rows = [(info, registry.live(g)) for g in groups for info in registry.list_versions(g)]
    if as_json:
        payload = [{**info.to_dict(), "live": info.version == live} for info, live in rows]
        typer.echo(json.dumps(payload, indent=2))
        return
    if not rows:
        typer.echo(f"no versions registered{f' in group {group!r}' if group else ''}")
        return
    typer.echo(f"  {'VERSION':32} {'CREATED (UTC)':19}  {'HOLDOUT LOSS':>12}  {'PARENT':32} NOTE")
    for info, live in rows:
        mark = "*" if info.version == live else " "
        typer.echo(
            f"{mark} {info.version:32} {_when(info.created)}  {_loss(info):>12}  "
            f"{info.parent or '-':32} {info.note}"
        )


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="version id, e.g. default-000003-1a2b3c4d")],
    group: GroupOption = None,
    reason: Annotated[str, typer.Option(help="why (kept in the registry log)")] = "cli",
) -> None:
    """Make VERSION the live model of its group; running workers switch to it."""
    from vigil.models.registry import group_of

    with _registry() as (registry, _):
        target = group or group_of(version)
        registry.get(target, version)  # a clear "unknown version" before anything moves
        changed = registry.promote(target, version, reason=reason)
    if changed:
        typer.echo(f"promoted {version} (group {target})")
    else:
        typer.echo(f"{version} is already live (group {target})")


@app.command()
def rollback(
    group: GroupOption = None,
    reason: Annotated[str, typer.Option(help="why (kept in the registry log)")] = "cli",
) -> None:
    """Put the previously live version of a group (default: the first configured) back live."""
    with _registry() as (registry, default_group):
        target = group or default_group
        before = registry.live(target)
        now = registry.rollback(target, reason=reason)
    typer.echo(f"rolled back group {target}: {before} -> {now}")


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _loss(info: VersionInfo) -> str:
    loss = info.metrics.get("candidate_loss")
    return f"{loss:.5g}" if isinstance(loss, int | float) else "-"
