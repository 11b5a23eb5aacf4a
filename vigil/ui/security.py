"""Write protection for everything on the worker's web server.

One aiohttp middleware guards every route — Vigil's ``/api/...``, alerting's ``/silences`` and
whatever else is mounted — so no page can forget it:

* a request that changes something (any method but GET, HEAD, OPTIONS) needs
  ``Authorization: Bearer <VIGIL_WEB_TOKEN>``; with no token configured the server is read-only
  and such requests answer **403**, a wrong or missing token **401**;
* and ``Content-Type: application/json``, else **415**. A browser cannot send that cross-site
  without a CORS preflight this server never grants, so a hostile page cannot make a visitor's
  browser create silences or promote models (CSRF).

``GET /`` redirects to the UI (Faust's own index page only said ``{"status": "OK"}``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import SecretStr

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def write_refusal(
    method: str, authorization: str | None, content_type: str, token: SecretStr | None
) -> web.Response | None:
    """The answer to a write request that may not go through, or None when it may."""
    if method in SAFE_METHODS:
        return None
    if token is None or not token.get_secret_value():
        return _error(
            403, "this server is read-only: set VIGIL_WEB_TOKEN on the worker to allow changes"
        )
    scheme, _, given = (authorization or "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        return _error(
            401, "write actions need the header Authorization: Bearer <VIGIL_WEB_TOKEN>",
            **{"WWW-Authenticate": 'Bearer realm="vigil"'},
        )  # fmt: skip
    if content_type != "application/json":
        return _error(415, "write actions take Content-Type: application/json")
    return None


def is_authorized(authorization: str | None, token: SecretStr | None) -> bool:
    """Whether a request carries the configured token (False when none is configured)."""
    if token is None or not token.get_secret_value():
        return False
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.get_secret_value().encode()
    )


def guard(
    token: SecretStr | None, *, home: str = "/ui"
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware; ``token`` is the settings' ``web_token``."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = write_refusal(
            request.method, request.headers.get("Authorization"), request.content_type, token
        )
        if refusal is not None:
            return refusal
        if request.path == "/" and request.method in ("GET", "HEAD"):
            raise web.HTTPFound(home)
        response = await handler(request)
        if not response.prepared:  # a streamed response has sent its headers already
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    return middleware
