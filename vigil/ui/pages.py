"""Mounts the UI: the write guard, the history recorder, the JSON API, pages and static files."""

from __future__ import annotations

from pathlib import Path

import faust
import redis
from faust.web import Request, Response, View
from redis.asyncio import Redis

from vigil.alerting.alert_log import AlertLog
from vigil.alerting.delivery_queue import DeliveryQueue
from vigil.alerting.silences import SilenceStore
from vigil.settings import VigilSettings
from vigil.stream.key_cache import KeyStateCache
from vigil.stream.state_store import StateStore
from vigil.ui.api import UiContext, add_api
from vigil.ui.history import HistoryRecorder, UiKeys
from vigil.ui.security import guard

STATIC = Path(__file__).resolve().parent / "static"
# scripts only from this server (no inline script, no eval): injected markup cannot run
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGES = {"/ui": "index.html", "/ui/alerts": "alerts.html", "/ui/models": "models.html"}


def _page(file: str) -> type[View]:
    class Page(View):
        async def get(self, request: Request, **_: str) -> Response:
            html = (STATIC / file).read_text(encoding="utf-8")
            return self.html(
                html, headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP}
            )

    Page.__name__ = f"Page_{file.split('.')[0]}"
    return Page


def add_ui(app: faust.App, settings: VigilSettings, keys: KeyStateCache | None = None) -> UiContext:
    """Mount everything on ``app``; the returned context is what the API reads from."""
    app.web.web_app.middlewares.append(guard(settings.web_token))  # type: ignore[attr-defined]
    recorder = HistoryRecorder(settings)
    app.service(recorder)  # type: ignore[arg-type]  # an instance works
    client = Redis.from_url(settings.redis)
    ctx = UiContext(
        settings=settings, redis=client, store=StateStore(client, settings.app_id),
        keys=keys, recorder=recorder, names=UiKeys(settings.app_id),
        alert_log=AlertLog(client, settings.app_id, maxlen=settings.stream.alert_stream_maxlen),
        silences=SilenceStore(client, settings.app_id),
        deliveries=DeliveryQueue(
            client, settings.app_id, retention_s=settings.alerting.retention_s
        ),
        registry_client=redis.Redis.from_url(settings.redis, socket_connect_timeout=5),
    )  # fmt: skip
    recorder.closes(client, ctx.registry_client)
    add_api(app, ctx)
    for path, file in PAGES.items():
        app.page(path)(_page(file))
    app.page("/ui/keys/{key}")(_page("key.html"))
    app.web.add_static("/ui/static/", STATIC)
    return ctx
