"""Alerting's pages on a Faust app's web server: ``/alerts`` (the alert log) and ``/silences``.

Every bad request answers 400 (404 for an unknown silence) with ``{"error": "..."}``, never 500.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

import faust
from faust.web import Request, Response, View
from redis.asyncio import Redis

from vigil.alerting.alert_log import AlertLog, AlertQueryError, parse_query
from vigil.alerting.silences import SilenceRequestError, SilenceStore
from vigil.settings import VigilSettings


def add_alerting_pages(app: faust.App, settings: VigilSettings, redis: Redis) -> None:
    """Mount ``GET /alerts``, ``GET|POST /silences`` and ``DELETE /silences/{id}`` on ``app``."""
    alert_log = AlertLog(redis, settings.app_id, maxlen=settings.stream.alert_stream_maxlen)
    silences = SilenceStore(redis, settings.app_id)

    async def answer(view: View, call: Awaitable[dict[str, Any]], status: int = 200) -> Response:
        try:
            return view.json(await call, status=status)
        except SilenceRequestError as exc:
            return view.json({"error": str(exc)}, status=exc.status)

    @app.page("/alerts")
    class Alerts(View):
        """Alerts logged since ``?since=`` (epoch seconds; default: the last hour), at most
        ``?limit=`` of them (default 500, at most 10 000)."""

        async def get(self, request: Request) -> Response:
            try:
                since, limit = parse_query(
                    request.query.get("since"), request.query.get("limit"), now=time.time()
                )
            except AlertQueryError as exc:
                return self.json({"error": str(exc)}, status=400)
            return self.json({"alerts": await alert_log.since(since, limit)})

    @app.page("/silences")
    class Silences(View):
        async def get(self, request: Request) -> Response:
            return await answer(self, silences.handle_list(dict(request.query)))

        async def post(self, request: Request) -> Response:
            try:
                body = await request.json()
            except ValueError:
                return self.json({"error": "body must be JSON"}, status=400)
            return await answer(self, silences.handle_create(body), status=201)

    @app.page("/silences/{silence_id}")
    class Silence(View):
        async def delete(self, request: Request, silence_id: str) -> Response:
            return await answer(self, silences.handle_expire(silence_id))
