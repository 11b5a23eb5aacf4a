"""HMAC-SHA256 signatures on webhook requests, so a receiver knows a notification came from Vigil,
is fresh, and was meant to carry the Idempotency-Key it arrived with.

The header is ``X-Vigil-Signature: t=<unix seconds>,v1=<hex>`` where the hex digest is
HMAC-SHA256(key, ``"<t>.<idempotency key>." + body``). The timestamp lets a receiver reject a
captured request replayed later (more than ``tolerance_s`` old, or more than ``max_skew_s`` in the
future); the idempotency key is signed because receivers deduplicate on it: were it unsigned, a
captured body replayed under a fresh key would pass the dedupe as a new notification. Several
``v1=`` entries may appear (key rotation); one match suffices.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Vigil-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300.0
DEFAULT_MAX_SKEW_S = 30.0


def signed_payload(timestamp: int, idempotency_key: str, body: bytes) -> bytes:
    """The exact bytes that are signed: ``<t>.<idempotency key>.<body>``."""
    return f"{timestamp}.{idempotency_key}.".encode() + body


def _digest(key: bytes, timestamp: int, idempotency_key: str, body: bytes) -> str:
    payload = signed_payload(timestamp, idempotency_key, body)
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def _key_bytes(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def sign(
    body: bytes, idempotency_key: str, key: str | bytes, timestamp: float | None = None
) -> str:
    """The header value for ``body`` sent under ``idempotency_key``, signed now (or at
    ``timestamp``)."""
    stamp = int(time.time() if timestamp is None else timestamp)
    return f"t={stamp},{SCHEME}={_digest(_key_bytes(key), stamp, idempotency_key, body)}"


def signature_problem(
    body: bytes, idempotency_key: str, header: str | None, key: str | bytes, *,
    tolerance_s: float = DEFAULT_TOLERANCE_S, max_skew_s: float = DEFAULT_MAX_SKEW_S,
    now: float | None = None,
) -> str | None:  # fmt: skip
    """Why ``header`` does not vouch for ``body`` under ``idempotency_key`` (None when it does)."""
    if not header:
        return "no signature header"
    stamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            stamp = int(value)
        elif name == SCHEME and value:
            candidates.append(value)
    if stamp is None or not candidates:
        return "malformed signature header"
    clock = time.time() if now is None else now
    if clock - stamp > tolerance_s:
        return f"timestamp {stamp} is {clock - stamp:.0f}s old (tolerance {tolerance_s:g}s)"
    if stamp - clock > max_skew_s:
        return f"timestamp {stamp} is {stamp - clock:.0f}s in the future (skew {max_skew_s:g}s)"
    expected = _digest(_key_bytes(key), stamp, idempotency_key, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        return "signature does not match"
    return None


def verify(
    body: bytes, idempotency_key: str, header: str | None, key: str | bytes, *,
    tolerance_s: float = DEFAULT_TOLERANCE_S, max_skew_s: float = DEFAULT_MAX_SKEW_S,
    now: float | None = None,
) -> bool:  # fmt: skip
    """True when ``header`` signs ``body`` and ``idempotency_key`` with ``key``, stamped at most
    ``tolerance_s`` before ``now`` and at most ``max_skew_s`` after it."""
    problem = signature_problem(
        body, idempotency_key, header, key, tolerance_s=tolerance_s, max_skew_s=max_skew_s, now=now
    )
    return problem is None
