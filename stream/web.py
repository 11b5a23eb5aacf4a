"""HTTP pages on Faust's own web server: health, readiness, latest predictions (and, from
:mod:`vigil.alerting`, alerts and silences; from :mod:`vigil.ui`, the operators' pages under
``/ui`` and their JSON under ``/api``, with writes guarded by ``VIGIL_WEB_TOKEN``).

``/metrics`` comes from Faust's Prometheus sensor, set up here on the app's registry so Faust's
own metrics and Vigil's are served together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import faust
import redis.asyncio as aioredis
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.web import Request, Response, View

from vigil.alerting.web import add_alerting_pages
from vigil.settings import VigilSettings
from vigil.stream.key_cache import KeyStateCache
from vigil.stream.metrics import VigilMetrics
from vigil.stream.state_store import StateStore
from vigil.ui import add_ui

Readiness = Callable[[], Awaitable[dict[str, bool]]]


def add_pages(
    app: faust.App,
    settings: VigilSettings,
    metrics: VigilMetrics,
    store: StateStore,
    redis: aioredis.Redis,
    readiness: Readiness,
    keys: KeyStateCache | None = None,
) -> None:
    setup_prometheus_sensors(app, registry=metrics.registry, name_prefix="faust")

    @app.page("/health")
    class Health(View):
        """Liveness: the worker's event loop answers."""

        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok", "app": settings.app_id})

    @app.page("/ready")
    class Ready(View):
        """Readiness: partitions assigned, Redis reachable, every group's model loaded."""

        async def get(self, request: Request) -> Response:
            checks = await readiness()
            status = 200 if all(checks.values()) else 503
            return self.json({"ready": status == 200, "checks": checks}, status=status)

    @app.page("/predictions/{key}")
    class LatestPrediction(View):
        async def get(self, request: Request, key: str) -> Response:
            found = await store.latest_prediction(key)
            if found is None:
                return self.json({"error": f"no prediction for key {key!r}"}, status=404)
            return self.json(found)

    add_alerting_pages(app, settings, redis)  # /alerts, /silences: vigil.alerting
    # /ui pages, /api/... JSON, and the write guard (bearer token + JSON) over every route
    add_ui(app, settings, keys)
