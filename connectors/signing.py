"""HMAC-SHA256 signatures on webhook bodies, so a receiver knows a notification came from Vigil
and is fresh.

The header is ``X-Vigil-Signature: t=<unix seconds>,v1=<hex>`` where the hex digest is
HMAC-SHA256(key, ``"<t>." + body``). Signing the timestamp together with the body lets a receiver
reject a captured request replayed later: it checks the digest AND that ``t`` is within a
tolerance of its own clock. Several ``v1=`` entries may appear (key rotation); one match suffices.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Vigil-Signature"
SCHEME = "v1"


def _digest(key: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def _key_bytes(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def sign(body: bytes, key: str | bytes, timestamp: float | None = None) -> str:
    """The header value for ``body``, signed now (or at ``timestamp``)."""
    stamp = int(time.time() if timestamp is None else timestamp)
    return f"t={stamp},{SCHEME}={_digest(_key_bytes(key), stamp, body)}"


def signature_problem(
    body: bytes, header: str | None, key: str | bytes, tolerance_s: float = 300.0,
    now: float | None = None,
) -> str | None:  # fmt: skip
    """Why ``header`` does not vouch for ``body`` (None when it does)."""
    if not header:
        return "no signature header"
    stamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.lstrip("-").isdigit():
            stamp = int(value)
        elif name == SCHEME and value:
            candidates.append(value)
    if stamp is None or not candidates:
        return "malformed signature header"
    clock = time.time() if now is None else now
    if abs(clock - stamp) > tolerance_s:
        return f"timestamp {stamp} is {clock - stamp:+.0f}s from now (tolerance {tolerance_s:g}s)"
    expected = _digest(_key_bytes(key), stamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        return "signature does not match"
    return None


def verify(
    body: bytes, header: str | None, key: str | bytes, tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:  # fmt: skip
    """True when ``header`` signs ``body`` with ``key`` within ``tolerance_s`` of ``now``."""
    return signature_problem(body, header, key, tolerance_s, now) is None
