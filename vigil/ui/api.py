"""The UI's JSON endpoints (``/api/...``), documented in docs/ui.md.

Reads come from Redis (the latest-prediction hash, key states, the UI's per-key history, the
alert log, silences, webhook delivery queues, the model registry) and this worker's memory.
Writes — silences, promote, rollback — call the same code as the CLI and pass the middleware of
:mod:`vigil.ui.security` first. Every bad parameter answers 400 with ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import faust
import orjson
import redis as sync_redis
from aiohttp import web
from faust.web import Request, Response, View
from redis.asyncio import Redis

from vigil.alerting.alert_log import AlertLog, AlertQueryError, parse_query
from vigil.alerting.delivery_queue import DeliveryQueue
from vigil.alerting.payloads import endpoint_id, endpoint_label
from vigil.alerting.silences import SilenceRequestError, SilenceStore
from vigil.settings import VigilSettings
from vigil.stream.key_cache import KeyStateCache
from vigil.stream.state_store import StateStore
from vigil.ui.history import HISTORY_POINTS, HistoryRecorder, UiKeys
from vigil.ui.security import is_authorized

MAX_PAGE = 500
MAX_QUERY_CHARS = 200
SSE_BLOCK_MS = 2000
SSE_KEEPALIVE_S = 15.0


class BadRequest(ValueError):
    """A parameter that cannot be served: answered 400 with its message."""


@dataclass
class UiContext:
    settings: VigilSettings
    redis: Redis  # the UI's own client (event streams hold a connection each while blocked)
    store: StateStore
    keys: KeyStateCache | None
    recorder: HistoryRecorder
    names: UiKeys
    alert_log: AlertLog
    silences: SilenceStore
    deliveries: DeliveryQueue
    registry_client: sync_redis.Redis  # the registry is synchronous: used on a thread

    def registry(self) -> Any:
        from vigil.models.registry import ModelRegistry  # torch: loaded on first use only

        return ModelRegistry(self.registry_client, self.settings.app_id)


# ---- parameters ---------------------------------------------------------------------------------
def int_param(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def time_param(query: Mapping[str, str], name: str) -> float | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be epoch seconds, got {raw!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number, got {raw!r}")
    return value


def stream_id_param(raw: str | None, name: str) -> str | None:
    if raw is None or raw == "":
        return None
    ms, dash, seq = raw.partition("-")
    if not ms.isdigit() or (dash and not seq.isdigit()) or len(raw) > 40:
        raise BadRequest(f"{name} must be a stream id like 1700000000000-1, got {raw!r}")
    return raw


def glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _loads(raw: Any) -> Any:
    try:
        return orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return None


class ApiView(View):
    """Turns :class:`BadRequest` (400) and :class:`SilenceRequestError` into JSON errors."""

    async def dispatch(self, request: Any) -> Any:
        try:
            return await super().dispatch(request)
        except BadRequest as exc:
            return self.json({"error": str(exc)}, status=400)
        except SilenceRequestError as exc:
            return self.json({"error": str(exc)}, status=exc.status)


# ---- keys ---------------------------------------------------------------------------------------
def incident_of(state: Any) -> dict[str, Any] | None:
    """The open incident recorded in a key's stored state, if any."""
    if not isinstance(state, dict):
        return None
    detector = state.get("incidents")
    if isinstance(detector, dict) and detector.get("incident_id"):
        return {"incident_id": detector["incident_id"], "start": detector.get("start"),
                "peak": detector.get("peak")}  # fmt: skip
    return None


async def key_rows(ctx: UiContext, entries: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Index rows of ``(key, latest prediction JSON)`` with incident state from Redis."""
    rows: list[dict[str, Any]] = []
    for key, raw in entries:
        p = _loads(raw) or {}
        rows.append({
            "key": key,
            "group": p.get("group"),
            "last_value": p.get("observed"),
            "last_score": p.get("score"),
            "anomaly": p.get("anomaly"),
            "model_version": (p.get("provenance") or {}).get("model_version"),
            "last_event_time": p.get("timestamp"),
            "open_incident": None,
            "in_this_worker": key in (ctx.keys.states.get(p.get("group") or "", {})
                                      if ctx.keys is not None else {}),
        })  # fmt: skip
    named = [(r, ctx.store.state_key(r["group"], r["key"])) for r in rows if r["group"]]
    if named:
        states = await ctx.redis.mget([name for _, name in named])
        for (row, _), raw in zip(named, states, strict=True):
            if raw is not None:
                row["open_incident"] = incident_of(_loads(raw))
    return rows


async def scan_keys(
    ctx: UiContext, query: str, cursor: int, limit: int
) -> tuple[list[tuple[str, Any]], int]:
    """About ``limit`` entries of the latest-prediction hash from ``cursor`` on (HSCAN: O(page),
    whatever the number of keys), matching ``query`` as a substring; and the next cursor
    (0 = done)."""
    match = f"*{glob_escape(query)}*" if query else None
    found: list[tuple[str, Any]] = []
    rounds = 0
    while True:
        reply: Any = await ctx.redis.hscan(
            ctx.store.predictions_hash, cursor, match=match, count=max(limit, 100)
        )
        cursor, chunk = reply
        found += [(_text(k), v) for k, v in chunk.items()]
        rounds += 1
        # a sparse match may need many rounds: stop after enough keys or enough work per page
        if cursor == 0 or len(found) >= limit or rounds >= 200:
            return found, int(cursor)


# ---- history ------------------------------------------------------------------------------------
def model_changes(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    changes, last = [], None
    for point in points:
        version = point.get("v")
        if version and version != last:
            if last is not None:
                changes.append({"t": point["t"], "version": version, "from": last})
            last = version
    return changes


async def key_history(
    ctx: UiContext, key: str, since: float | None, until: float | None, limit: int
) -> dict[str, Any]:
    low = f"{max(0, int(since * 1000))}-0" if since is not None else "-"
    high = f"{max(0, int(until * 1000))}-99" if until is not None else "+"
    entries: Any = await ctx.redis.xrevrange(ctx.names.history(key), high, low, count=limit)
    points = []
    for entry_id, fields in reversed(entries or []):
        point = _loads(fields.get(b"p"))
        if isinstance(point, dict):
            points.append(point | {"id": _text(entry_id)})
    raw_events: Any = await ctx.redis.xrange(ctx.names.events(key), "-", "+")
    events = []
    for entry_id, fields in raw_events or []:
        event = _loads(fields.get(b"e"))
        if isinstance(event, dict):
            events.append(event | {"id": _text(entry_id)})
    latest = _loads(await ctx.redis.hget(ctx.store.predictions_hash, key))
    return {
        "key": key,
        "group": (latest or {}).get("group"),
        "points": points,
        "events": events,
        "incidents": incidents(events),
        "model_changes": model_changes(points),
        "latest": latest,
        "last_id": points[-1]["id"] if points else None,
        "last_event_id": events[-1]["id"] if events else None,
    }


def incidents(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alert events folded into one span per alert id (``end`` None while still firing)."""
    spans: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.get("kind") != "alert" or not event.get("alert_id"):
            continue
        span = spans.setdefault(event["alert_id"], {
            "alert_id": event["alert_id"], "start": event.get("start"), "end": None,
            "severity": event.get("severity"), "status": "firing",
        })  # fmt: skip
        if event.get("status") == "resolved":
            span["status"] = "resolved"
            span["end"] = event.get("end")
    return sorted(spans.values(), key=lambda s: s["start"] or 0)


# ---- models (synchronous registry, run on a thread) ----------------------------------------------
def models_overview(ctx: UiContext) -> dict[str, Any]:
    registry = ctx.registry()
    configured = [g.name for g in ctx.settings.groups]
    groups = list(dict.fromkeys(configured + registry.groups()))
    out = []
    for group in groups:
        live = registry.live(group)
        versions = [
            {k: v for k, v in info.to_dict().items() if k != "config"}
            | {"live": info.version == live}
            for info in registry.list_versions(group)
        ]
        out.append({
            "group": group, "configured": group in configured, "live": live,
            "history": registry.history(group), "versions": versions,
            "events": registry.events(group, 20),
        })  # fmt: skip
    return {"groups": out}


def promote(ctx: UiContext, group: str, version: str, reason: str) -> dict[str, Any]:
    """What ``vigil models promote VERSION --group GROUP`` does."""
    from vigil.models.registry import group_of

    registry = ctx.registry()
    if group_of(version) != group:
        raise BadRequest(
            f"version {version!r} belongs to group {group_of(version)!r}, not {group!r}"
        )
    registry.get(group, version)  # a clear "unknown version" before anything moves
    changed = registry.promote(group, version, reason=reason)
    return {"group": group, "live": version, "changed": changed}


def rollback(ctx: UiContext, group: str, reason: str) -> dict[str, Any]:
    """What ``vigil models rollback --group GROUP`` does."""
    registry = ctx.registry()
    before = registry.live(group)
    now = registry.rollback(group, reason=reason)
    return {"group": group, "from": before, "live": now}


def _group_param(group: str) -> str:
    from vigil.models.registry import GROUP_NAME

    if not GROUP_NAME.match(group):
        raise BadRequest(f"invalid group name {group!r}")
    return group


async def _registry_call(view: View, call: Any, *args: Any) -> Response:
    from vigil.models.registry import RegistryError, UnknownVersionError

    try:
        return view.json(await asyncio.to_thread(call, *args))
    except UnknownVersionError as exc:
        return view.json({"error": str(exc)}, status=404)
    except RegistryError as exc:
        return view.json({"error": str(exc)}, status=409)
    except sync_redis.RedisError as exc:
        return view.json({"error": f"registry unavailable: {exc}"}, status=503)


def _reason(body: Mapping[str, Any]) -> str:
    reason = body.get("reason", "web")
    if not isinstance(reason, str) or len(reason) > 500:
        raise BadRequest("reason must be a string of at most 500 characters")
    return reason or "web"


def _only(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"unknown fields: {sorted(unknown)}")


# ---- the routes ---------------------------------------------------------------------------------
def add_api(app: faust.App, ctx: UiContext) -> None:
    settings = ctx.settings

    @app.page("/api/session")
    class Session(ApiView):
        """Whether writes are possible here and whether this request's token allows them."""

        async def get(self, request: Request) -> Response:
            token = settings.web_token
            return self.json({
                "writes_enabled": token is not None and bool(token.get_secret_value()),
                "authorized": is_authorized(request.headers.get("Authorization"), token),
                "app_id": settings.app_id,
            })  # fmt: skip

    @app.page("/api/keys")
    class Keys(ApiView):
        async def get(self, request: Request) -> Response:
            query = request.query.get("q", "")
            if len(query) > MAX_QUERY_CHARS:
                raise BadRequest(f"q is longer than {MAX_QUERY_CHARS} characters")
            cursor = int_param(request.query, "cursor", 0, 0, 2**63 - 1)
            limit = int_param(request.query, "limit", 50, 1, MAX_PAGE)
            entries, next_cursor = await scan_keys(ctx, query, cursor, limit)
            rows = sorted(await key_rows(ctx, entries), key=lambda r: r["key"])
            total = await ctx.redis.hlen(ctx.store.predictions_hash)
            return self.json({"keys": rows, "next_cursor": next_cursor, "total": total})

    @app.page("/api/keys/{key}")
    class Key(ApiView):
        async def get(self, request: Request, key: str) -> Response:
            rows = await key_rows(
                ctx, [(key, await ctx.redis.hget(ctx.store.predictions_hash, key))]
            )
            if rows[0]["group"] is None:
                return self.json({"error": f"no prediction for key {key!r}"}, status=404)
            return self.json(rows[0])

    @app.page("/api/keys/{key}/history")
    class History(ApiView):
        """The key's last ``limit`` points between ``since`` and ``until`` (data time)."""

        async def get(self, request: Request, key: str) -> Response:
            since = time_param(request.query, "since")
            until = time_param(request.query, "until")
            if since is not None and until is not None and until < since:
                raise BadRequest("until must not be before since")
            limit = int_param(request.query, "limit", HISTORY_POINTS, 1, HISTORY_POINTS)
            return self.json(await key_history(ctx, key, since, until, limit))

    @app.page("/api/keys/{key}/events")
    class LiveEvents(ApiView):
        """Server-sent events: ``point`` for each new prediction, ``alert``/``drift`` events.
        ``Last-Event-ID`` (a reconnecting browser's) or ``?after=`` is the last point id seen,
        ``?events_after=`` the last event id."""

        async def get(self, request: Request, key: str) -> Any:
            last_point = (
                stream_id_param(
                    request.headers.get("Last-Event-ID") or request.query.get("after"), "after"
                )
                or "$"
            )
            last_event = stream_id_param(request.query.get("events_after"), "events_after") or "$"
            return await event_stream(ctx, request, key, last_point, last_event)

    @app.page("/api/alerts")
    class Alerts(ApiView):
        """Alerts logged since ``since`` (default: the last 24 h), at most ``limit``; ``open``
        is each alert id whose latest entry is still firing."""

        async def get(self, request: Request) -> Response:
            try:
                since, limit = parse_query(
                    request.query.get("since"), request.query.get("limit"), now=time.time(),
                    default_window_s=86_400.0,
                )  # fmt: skip
            except AlertQueryError as exc:
                raise BadRequest(str(exc)) from None
            alerts = await ctx.alert_log.since(since, limit)
            latest: dict[str, dict[str, Any]] = {}
            for alert in alerts:
                latest[alert["alert_id"]] = alert
            firing = [a for a in latest.values() if a.get("status") == "firing"]
            return self.json({"alerts": alerts, "firing": firing})

    @app.page("/api/silences")
    class Silences(ApiView):
        async def get(self, request: Request) -> Response:
            return self.json(await ctx.silences.handle_list(dict(request.query)))

        async def post(self, request: Request) -> Response:
            body = await json_body(request)
            matchers = body.get("matchers")
            if isinstance(matchers, dict):  # the CLI's rule: never silence everything
                globs = [matchers.get(f, "*") for f in ("key", "group", "severity")]
                if all(g in ("*", "", None) for g in globs):
                    raise BadRequest("refusing to silence everything: give key, group or severity")
            comment = body.get("comment")
            if not isinstance(comment, str) or not comment.strip():
                raise BadRequest("comment is required: say why (it is shown with the silence)")
            body.setdefault("created_by", "web")
            return self.json(await ctx.silences.handle_create(body), status=201)

    @app.page("/api/silences/{silence_id}")
    class Silence(ApiView):
        async def delete(self, request: Request, silence_id: str) -> Response:
            return self.json(await ctx.silences.handle_expire(silence_id))

    @app.page("/api/webhooks")
    class Webhooks(ApiView):
        """Delivery state per configured endpoint (what ``vigil alerting status`` counts)."""

        async def get(self, request: Request) -> Response:
            rows = []
            for endpoint in settings.webhooks:
                eid = endpoint_id(endpoint)
                oldest = await ctx.redis.zrange(ctx.deliveries.age_key(eid), 0, 0, withscores=True)
                rows.append({
                    "endpoint": endpoint_label(endpoint), "id": eid,
                    "format": endpoint.format, "min_severity": endpoint.min_severity,
                    "key_pattern": endpoint.key_pattern,
                    "pending": await ctx.deliveries.count_pending(eid),
                    "next_attempt_at": await ctx.deliveries.next_due(eid),
                    "oldest_pending_since": float(oldest[0][1]) if oldest else None,
                })  # fmt: skip
            return self.json({"webhooks": rows})

    @app.page("/api/models")
    class Models(ApiView):
        async def get(self, request: Request) -> Response:
            return await _registry_call(self, models_overview, ctx)

    @app.page("/api/models/{group}/promote")
    class Promote(ApiView):
        async def post(self, request: Request, group: str) -> Response:
            body = await json_body(request)
            _only(body, {"version", "reason"})
            version = body.get("version")
            if not isinstance(version, str) or not version:
                raise BadRequest("version (a version id) is required")
            from vigil.models.registry import UnknownVersionError, group_of

            try:
                group_of(version)
            except UnknownVersionError as exc:
                raise BadRequest(str(exc)) from None
            return await _registry_call(
                self, promote, ctx, _group_param(group), version, _reason(body)
            )

    @app.page("/api/models/{group}/rollback")
    class Rollback(ApiView):
        async def post(self, request: Request, group: str) -> Response:
            body = await json_body(request)
            _only(body, {"reason"})
            return await _registry_call(self, rollback, ctx, _group_param(group), _reason(body))


async def event_stream(
    ctx: UiContext, request: Any, key: str, last_point: str, last_event: str
) -> web.StreamResponse:
    """Relay new entries of the key's history and events streams until the client leaves."""
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })  # fmt: skip
    await response.prepare(request)
    history, events = ctx.names.history(key), ctx.names.events(key)
    ids: dict[Any, Any] = {history: last_point, events: last_event}
    await response.write(b"retry: 2000\n\n")
    quiet_since = time.monotonic()
    with contextlib.suppress(ConnectionResetError, asyncio.CancelledError, RuntimeError):
        while not ctx.recorder.closing.is_set():
            found: Any = await ctx.redis.xread(ids, count=100, block=SSE_BLOCK_MS)
            chunks: list[bytes] = []
            for stream, entries in found or []:
                name = _text(stream)
                for entry_id, fields in entries:
                    eid = _text(entry_id)
                    ids[name] = eid
                    if name == history:
                        data, kind = fields.get(b"p"), "point"
                        payload = (_loads(data) or {}) | {"id": eid}
                        chunks.append(f"id: {eid}\nevent: point\n".encode())
                    else:
                        payload = (_loads(fields.get(b"e")) or {}) | {"id": eid}
                        kind = str(payload.get("kind", "event"))
                        chunks.append(f"event: {kind}\n".encode())
                    chunks.append(b"data: " + json.dumps(payload).encode() + b"\n\n")
            if chunks:
                await response.write(b"".join(chunks))
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > SSE_KEEPALIVE_S:
                await response.write(b": keepalive\n\n")  # proxies and the browser: still here
                quiet_since = time.monotonic()
    return response
