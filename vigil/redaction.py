"""Masks secrets before anything is printed or logged: operators paste output into tickets.

Secret-bearing settings are the Redis URL's password, the SASL password, the webhook signing key
and webhook URLs (their path and query often *are* the token, e.g. Slack's hooks). Masking is
structural where the shape is known and, as a safety net, by value: every raw secret string is
replaced wherever it still appears. Strings only: what is secret in the settings is decided in
:mod:`vigil.settings`, which imports this module (so this one never imports it back).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

MASK = "***"
# user:password@ in a URL or a bare host list (user may be empty: redis://:password@host)
_USERINFO = re.compile(r"(?P<user>[^\s:/@,'\"]*):(?P<password>[^\s@/,'\"]+)@")
_HTTP_URL = re.compile(r"(?P<origin>https?://[^\s/?#'\",]+)(?P<rest>[/?#][^\s'\",]*)?")


def mask_credentials(text: str) -> str:
    """``redis://:hunter2@host:6379/0`` -> ``redis://:***@host:6379/0``; anything else as is."""
    return _USERINFO.sub(lambda m: f"{m['user']}:{MASK}@", text)


def mask_webhook_url(url: str) -> str:
    """Keep scheme, host and port; the path and query may carry the receiver's token."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        origin = (
            f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"
        )
    except ValueError:  # not a URL we can take apart: keep only what precedes the path
        return mask_credentials(_HTTP_URL.sub(_origin_only, url))
    if not parts.scheme or not host:
        return mask_credentials(_HTTP_URL.sub(_origin_only, url))
    hidden = parts.path not in ("", "/") or parts.query or parts.fragment
    return origin + (f"/{MASK}" if hidden else "")


def _origin_only(match: re.Match[str]) -> str:
    return match["origin"] + (f"/{MASK}" if match["rest"] else "")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask URL credentials, http(s) URL paths and every given raw secret in free text."""
    # by value only from 4 characters: masking every "0" of a 1-character password garbles all
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return mask_credentials(_HTTP_URL.sub(_origin_only, text))


def userinfo_passwords(text: str) -> list[str]:
    """Passwords of every ``user:password@`` in a URL or a bare host list."""
    return [m["password"] for m in _USERINFO.finditer(text)]


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that are secret: its password, and for http(s) its path and query."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return userinfo_passwords(url)
    found = [password] if password else []
    if parts.scheme in ("http", "https"):
        found += [p for p in (parts.path, parts.query, parts.fragment) if p not in ("", "/")]
    return found
