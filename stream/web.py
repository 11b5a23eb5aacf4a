"""HTTP pages on Faust's own web server: health, readiness, latest predictions, alerts.

``/metrics`` comes from Faust's Prometheus sensor, set up here on the app's registry so Faust's
own metrics and Vigil's are served together.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import redis.exceptions
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.web import Request, Response, View

if TYPE_CHECKING:
    from stream.topology import VigilStream


def add_pages(stream: VigilStream) -> None:
    app = stream.app
    setup_prometheus_sensors(app, registry=stream.metrics.registry, name_prefix="faust")

    @app.page("/health")
    class Health(View):
        """Liveness: the worker's event loop answers."""

        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok", "app": stream.settings.app_id})

    @app.page("/ready")
    class Ready(View):
        """Readiness: partitions assigned, Redis reachable, every group's model loaded."""

        async def get(self, request: Request) -> Response:
            checks = await readiness(stream)
            status = 200 if all(checks.values()) else 503
            return self.json({"ready": status == 200, "checks": checks}, status=status)

    @app.page("/predictions/{key}")
    class LatestPrediction(View):
        async def get(self, request: Request, key: str) -> Response:
            found = await stream.store.latest_prediction(key)
            if found is None:
                return self.json({"error": f"no prediction for key {key!r}"}, status=404)
            return self.json(found)

    @app.page("/alerts")
    class Alerts(View):
        """Alerts recorded since ``?since=`` (epoch seconds; default: the last hour)."""

        async def get(self, request: Request) -> Response:
            raw = request.query.get("since")
            try:
                since = float(raw) if raw is not None else time.time() - 3600
            except ValueError:
                return self.json({"error": f"since must be epoch seconds, got {raw!r}"}, status=400)
            limit = min(int(request.query.get("limit", "500")), 10_000)
            return self.json({"alerts": await stream.store.alerts_since(since, limit)})

    _add_silence_pages(stream)


async def readiness(stream: VigilStream) -> dict[str, bool]:
    try:
        redis_ok = bool(await stream.redis.ping())
    except (redis.exceptions.RedisError, OSError):
        redis_ok = False
    try:
        assigned = bool(stream.app.consumer.assignment())
    except Exception:
        assigned = False
    return {
        "partitions_assigned": assigned,
        "redis": redis_ok,
        "models_loaded": all(g.ready for g in stream.groups.values()),
    }


def _add_silence_pages(stream: VigilStream) -> None:
    """Silences live in Redis beside the alert routing; these pages are their HTTP face."""
    from connectors.alert_routing import SilenceRequestError, SilenceStore

    app = stream.app
    store = SilenceStore(stream.redis, stream.settings.app_id)

    async def answer(view: View, call: Awaitable[dict[str, Any]], status: int = 200) -> Response:
        try:
            return view.json(await call, status=status)
        except SilenceRequestError as exc:
            return view.json({"error": str(exc)}, status=exc.status)

    @app.page("/silences")
    class Silences(View):
        async def get(self, request: Request) -> Response:
            return await answer(self, store.handle_list(dict(request.query)))

        async def post(self, request: Request) -> Response:
            try:
                body = await request.json()
            except ValueError:
                return self.json({"error": "body must be JSON"}, status=400)
            return await answer(self, store.handle_create(body), status=201)

    @app.page("/silences/{silence_id}")
    class Silence(View):
        async def delete(self, request: Request, silence_id: str) -> Response:
            return await answer(self, store.handle_expire(silence_id))
