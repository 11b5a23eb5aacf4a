"""`vigil models …`: the model registry from the command line."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from vigil.models.registry import ModelRegistry, VersionInfo
    from vigil.settings import ModelConfig

app = typer.Typer(
    help="Model registry: list versions, promote one, roll back, export and import.",
    no_args_is_help=True,
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
        from vigil.redaction import mask_credentials, scrub
        from vigil.settings import settings_secrets

        where = mask_credentials(settings.redis)
        _fail(scrub(f"cannot use Redis at {where}: {exc}", settings_secrets(settings)))
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


# ---- export / import: one file per version ----------------------------------------------------
EXPORT_FORMAT = "vigil-model"
EXPORT_FORMAT_VERSION = 1


@app.command("export")
def export_version(
    group: Annotated[str, typer.Argument(help="model group, e.g. default")],
    version: Annotated[
        str | None, typer.Argument(help="version id (default: the group's live version)")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="file to write, e.g. default-live.vigil-model.zip")
    ] = Path("model.vigil-model.zip"),
) -> None:
    """Write one version (weights, config, metrics) to a file another deployment can import.

    The file is a zip: manifest.json (group, version, config, metrics, sha256 of the weights,
    provenance) and weights.pt (the torch state_dict, loadable with weights_only=True).

    Example: vigil models export default --out default.vigil-model.zip
    """
    import zipfile

    from vigil import __version__

    with _registry() as (registry, _):
        chosen = version or registry.live(group)
        if chosen is None:
            _fail(f"group {group!r} has no live version; name one (vigil models list)")
        info = registry.get(group, chosen)
        model = registry.load_model(group, chosen)  # checks the stored sha256 on the way
    weights = _weights_bytes(model)
    manifest = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        **info.to_dict(),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "exported_at": datetime.now(UTC).isoformat(),
        "exported_by": f"vigil {__version__}",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", json.dumps(manifest, indent=2))
        archive.writestr("weights.pt", weights)
    typer.echo(f"exported {chosen} (group {group}, {len(weights)} bytes of weights) -> {out}")


@app.command("import")
def import_version(
    path: Annotated[Path, typer.Argument(help="a file written by `vigil models export`")],
    group: Annotated[
        str | None, typer.Option("--group", "-g", help="register into this group instead")
    ] = None,
    promote_it: Annotated[
        bool, typer.Option("--promote", help="make the imported version live at once")
    ] = False,
) -> None:
    """Register an exported version in this deployment's registry (a new version id here).

    Example: vigil models import default.vigil-model.zip --promote
    """
    config, metrics, weights, manifest = _read_export(path)
    from vigil.models.forecaster import build_forecaster

    target = group or str(manifest["group"])
    model = build_forecaster(config)
    state = torch_load(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        _fail(f"{path}: the weights do not fit the config in the file ({exc})")
    from vigil.settings import settings_or_exit

    configured = {g.name: g.model for g in settings_or_exit().groups}
    if target in configured and configured[target] != config:
        typer.secho(
            f"note: group {target!r} is configured with a different model shape than the file's;"
            " workers serve the imported version with the file's config",
            fg=typer.colors.YELLOW,
            err=True,
        )
    with _registry() as (registry, _):
        new_version = registry.register(
            target,
            model,
            config,
            {**metrics, "imported_from": str(manifest["version"])},
            note=f"imported from {manifest['version']} ({path.name})",
        )
        promoted = registry.promote(target, new_version, reason="import") if promote_it else False
    typer.echo(
        f"imported {manifest['version']} as {new_version} (group {target})"
        + (", now live" if promoted else "; promote with `vigil models promote`")
    )


def _weights_bytes(model: object) -> bytes:
    import io

    import torch

    state = {name: t.detach().cpu() for name, t in model.state_dict().items()}  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def torch_load(weights: bytes) -> dict[str, object]:
    import io

    import torch

    loaded: dict[str, object] = torch.load(
        io.BytesIO(weights), map_location="cpu", weights_only=True
    )
    return loaded


def _read_export(path: Path) -> tuple[ModelConfig, dict[str, object], bytes, dict[str, object]]:
    """(config, metrics, weights, manifest) of an export file, checked; one red line if bad."""
    import zipfile

    from pydantic import ValidationError

    from vigil.settings import ModelConfig

    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("manifest.json"))
            weights = archive.read("weights.pt")
    except FileNotFoundError:
        _fail(f"{path}: no such file")
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        _fail(f"{path}: not a Vigil model export ({exc})")
    if manifest.get("format") != EXPORT_FORMAT:
        _fail(f"{path}: not a Vigil model export (format {manifest.get('format')!r})")
    if manifest.get("format_version") != EXPORT_FORMAT_VERSION:
        _fail(f"{path}: export format version {manifest.get('format_version')} is not supported")
    if hashlib.sha256(weights).hexdigest() != manifest.get("weights_sha256"):
        _fail(f"{path}: the weights do not match their sha256: the file is damaged")
    try:
        config = ModelConfig.model_validate(manifest["config"])
    except (KeyError, ValidationError) as exc:
        _fail(f"{path}: bad model config ({exc})")
    return config, dict(manifest.get("metrics") or {}), weights, manifest
