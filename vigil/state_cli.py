"""`vigil state show|reset`: what Vigil remembers about a key, and forgetting it on purpose.

A key's state lives in Redis at ``vigil:{app_id}:state:{group}:{key}`` (window, normaliser,
detector, source positions) and its latest prediction in the hash ``vigil:{app_id}:predictions``.
Reset deletes both, e.g. after a sensor was replaced and its old statistics no longer apply.

A worker that holds the key in memory keeps using (and writing back) its in-memory state: a reset
takes effect for keys that are *not* in a worker's memory. A key leaves worker memory after
``VIGIL_STREAM__IDLE_KEY_EVICT_S`` without events, when its partition moves to another worker,
or when the worker restarts. So reset a key while its sensor is silent for longer than that
(a replaced sensor usually is), or restart the workers (a rollout) right after the reset, before
the key's next event.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import typer

from vigil.ops_common import fail, service_errors, when
from vigil.settings import VigilSettings, settings_or_exit

app = typer.Typer(
    help="Show or reset the per-key state a worker keeps in Redis.", no_args_is_help=True
)

KeyOption = Annotated[str, typer.Option("--key", "-k", help="series key, e.g. sensor.nyc_taxi")]
GroupOption = Annotated[
    str,
    typer.Option("--group", "-g", help="model group (with --key: default = every group)"),
]


def _prefix(settings: VigilSettings) -> str:
    return f"vigil:{settings.app_id}"


def state_key(settings: VigilSettings, group: str, key: str) -> str:
    return f"{_prefix(settings)}:state:{group}:{key}"


def _number(value: Any) -> float | None:
    """A codec-encoded float (finite, or ``{"$float": "nan"}``) as a float."""
    if isinstance(value, dict) and "$float" in value:
        return float(value["$float"])
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def summary(group: str, key: str, state: dict[str, Any], ttl_s: int | None) -> dict[str, Any]:
    """The operator's view of one stored state (see vigil.stream.key_state.KeyState)."""
    norm = state.get("normalizer") or {}
    means = [_number(v) for v in norm.get("mean", [])]
    variances = [_number(v) for v in norm.get("var", [])]
    stds = [math.sqrt(v) if v is not None and v >= 0 else None for v in variances]
    incidents = state.get("incidents") or {}
    incident_id = incidents.get("incident_id")
    return {
        "key": key,
        "group": group,
        "events": state.get("events"),
        "last_ts": _number(state.get("last_ts")),
        "interval_s": _number(state.get("interval")),
        "positions": state.get("positions", {}),
        "normalizer": {"count": norm.get("count"), "mean": means, "std": stds},
        "incident_open": incident_id is not None,
        "incident": (
            {
                "id": incident_id,
                "start": _number(incidents.get("start")),
                "peak": _number(incidents.get("peak")),
            }
            if incident_id is not None
            else None
        ),
        "hidden_state_version": state.get("hidden_version"),
        "expires_in_s": ttl_s,
    }


def _line(s: dict[str, Any]) -> str:
    norm = s["normalizer"]
    mean = ", ".join("-" if m is None else f"{m:.6g}" for m in norm["mean"]) or "-"
    std = ", ".join("-" if v is None else f"{v:.6g}" for v in norm["std"]) or "-"
    positions = ", ".join(f"{tp}@{off}" for tp, off in sorted(s["positions"].items())) or "-"
    incident = f"OPEN since {when(s['incident']['start'])}" if s["incident_open"] else "none open"
    expires = "never" if s["expires_in_s"] is None else f"in {s['expires_in_s']} s"
    return (
        f"{s['key']} [{s['group']}]: {s['events']} events, last {when(s['last_ts'])},"
        f" normaliser mean {mean} std {std}, incident {incident}, positions {positions},"
        f" expires {expires}"
    )


def _find(settings: VigilSettings, client: Any, key: str | None, group: str | None) -> list[
    tuple[str, str, str]
]:  # fmt: skip
    """(group, key, redis key) of the stored states that --key/--group select."""
    if key is not None:
        groups = [group] if group else [g.name for g in settings.groups]
        names = [state_key(settings, g, key) for g in groups]
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.exists(name)
        present = pipe.execute()
        return [(g, key, n) for g, n, p in zip(groups, names, present, strict=True) if p]
    assert group is not None
    prefix = state_key(settings, group, "")
    return [
        (group, name.decode()[len(prefix) :], name.decode())
        for name in client.scan_iter(match=_glob_escape(prefix) + "*", count=1000)
    ]


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _client(settings: VigilSettings) -> Any:
    import redis

    return redis.Redis.from_url(settings.redis, socket_connect_timeout=5, socket_timeout=10)


def _selection(settings: VigilSettings, key: str, group: str) -> tuple[str | None, str | None]:
    if not key and not group:
        raise fail(settings, "give --key KEY (one series) or --group GROUP (all its keys)", 2)
    return key or None, group or None


@app.command()
def show(
    key: KeyOption = "",
    group: GroupOption = "",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show a key's stored state: events, last timestamp, source positions, normaliser mean/std,
    whether an incident is open. --group alone lists every key of the group.

    Example: vigil state show --key sensor.nyc_taxi (a key of the shipped demo data)
    """
    settings = settings_or_exit()
    selected_key, selected_group = _selection(settings, key, group)
    with service_errors(settings):
        client = _client(settings)
        try:
            found = _find(settings, client, selected_key, selected_group)
            rows = []
            for g, k, name in found:
                raw = client.get(name)
                if raw is None:  # expired or reset meanwhile
                    continue
                ttl = client.ttl(name)
                try:
                    state = json.loads(raw)
                except ValueError:
                    rows.append({"key": k, "group": g, "error": "state is not JSON"})
                    continue
                rows.append(summary(g, k, state, ttl if ttl >= 0 else None))
            latest = (
                client.hget(f"{_prefix(settings)}:predictions", selected_key)
                if selected_key
                else None
            )
        finally:
            client.close()
    if not rows:
        what = f"key {selected_key!r}" if selected_key else f"group {selected_group!r}"
        raise fail(settings, f"no stored state for {what} (app id {settings.app_id})")
    if as_json:
        payload: Any = rows[0] if selected_key and len(rows) == 1 else rows
        if selected_key and len(rows) == 1 and latest:
            payload = {**payload, "latest_prediction": json.loads(latest)}
        typer.echo(json.dumps(payload, indent=2))
        return
    for row in rows:
        typer.echo(_line(row) if "error" not in row else f"{row['key']}: {row['error']}")


@app.command()
def reset(
    key: KeyOption = "",
    group: GroupOption = "",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Forget a key's state and latest prediction (or every key of --group), e.g. after a sensor
    was replaced. Takes effect for keys not held in a worker's memory: reset while the key has
    been silent longer than VIGIL_STREAM__IDLE_KEY_EVICT_S, or restart the workers right after.

    Example: vigil state reset --key sensor.nyc_taxi --yes
    """
    settings = settings_or_exit()
    selected_key, selected_group = _selection(settings, key, group)
    with service_errors(settings):
        client = _client(settings)
        try:
            found = _find(settings, client, selected_key, selected_group)
            if not found:
                what = f"key {selected_key!r}" if selected_key else f"group {selected_group!r}"
                typer.echo(f"no stored state for {what} (app id {settings.app_id}); nothing to do")
                return
            keys = sorted({k for _, k, _ in found})
            shown = ", ".join(f"{k} [{g}]" for g, k, _ in found[:5])
            more = f" and {len(found) - 5} more" if len(found) > 5 else ""
            if not yes and not typer.confirm(
                f"reset the state of {len(found)} key(s): {shown}{more}?", default=False
            ):
                raise typer.Exit(1)
            pipe = client.pipeline(transaction=True)
            for _, _, name in found:
                pipe.delete(name)
            for chunk in range(0, len(keys), 1000):
                pipe.hdel(f"{_prefix(settings)}:predictions", *keys[chunk : chunk + 1000])
            pipe.execute()
        finally:
            client.close()
    typer.echo(
        f"reset {len(found)} key state(s) and their latest predictions (app id {settings.app_id})."
        f" A worker holding a key in memory keeps its state until it evicts it (idle"
        f" {settings.stream.idle_key_evict_s:g} s) or restarts."
    )
