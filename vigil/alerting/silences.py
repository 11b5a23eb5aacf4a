"""Silences: matchers with a time range, created by people, held in Redis, checked when a group
is sent. The store also carries the request handlers behind ``/silences`` so the web page and the
CLI validate alike."""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from redis.asyncio import Redis

from vigil.alerting.redis_text import text
from vigil.alerting.routing import matches
from vigil.records import Alert
from vigil.settings import AlertMatcher

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``"90s"``, ``"15m"``, ``"1h30m"``, ``"2d"`` or a plain number of seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip()
        try:
            seconds = float(raw)
        except ValueError:
            parts = _DURATION.findall(raw)
            if not parts or _DURATION.sub("", raw).strip():
                raise ValueError(f"duration {text!r} is not like 90s, 15m, 1h30m or 2d") from None
            seconds = sum(float(n) * _UNIT_SECONDS[unit.lower()] for n, unit in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return seconds


class Silence(BaseModel):
    """Mutes firing alerts that match ``matchers`` between ``starts_at`` and ``ends_at``."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:16])
    matchers: AlertMatcher
    starts_at: float
    ends_at: float
    comment: str = ""
    created_by: str = ""
    created_at: float = Field(default_factory=time.time)

    def state(self, now: float) -> Literal["pending", "active", "expired"]:
        if now >= self.ends_at:
            return "expired"
        return "active" if now >= self.starts_at else "pending"

    def mutes(self, alert: Alert, now: float) -> bool:
        return self.state(now) == "active" and matches(self.matchers, alert)

    def to_json_dict(self, now: float) -> dict[str, Any]:
        return self.model_dump() | {"state": self.state(now)}


class SilenceRequestError(ValueError):
    """A silence request that cannot be served; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SilenceStore:
    """Silences in the Redis hash ``vigil:{app_id}:silences`` (id → JSON), plus the handlers the
    worker's web server mounts on ``/silences``: each takes request data and returns a JSON-able
    dict, or raises :class:`SilenceRequestError` carrying the HTTP status."""

    def __init__(self, redis: Redis, app_id: str, *, keep_expired_s: float = 7 * 86400.0) -> None:
        self.redis = redis
        self.key = f"vigil:{app_id}:silences"
        self.keep_expired_s = keep_expired_s

    async def create(
        self, matchers: AlertMatcher, *, duration_s: float | None = None,
        ends_at: float | None = None, starts_at: float | None = None, comment: str = "",
        created_by: str = "", now: float | None = None,
    ) -> Silence:  # fmt: skip
        clock = time.time() if now is None else now
        start = clock if starts_at is None else starts_at
        if (duration_s is None) == (ends_at is None):
            raise ValueError("give exactly one of duration or ends_at")
        end = start + duration_s if duration_s is not None else ends_at
        assert end is not None
        if end <= start:
            raise ValueError("a silence must end after it starts")
        if end <= clock:
            raise ValueError("a silence that ends in the past mutes nothing")
        silence = Silence(
            matchers=matchers, starts_at=start, ends_at=end, comment=comment, created_by=created_by,
            created_at=clock,
        )  # fmt: skip
        await self.redis.hset(self.key, silence.id, silence.model_dump_json())
        return silence

    async def get(self, silence_id: str) -> Silence | None:
        doc = await self.redis.hget(self.key, silence_id)
        return None if doc is None else Silence.model_validate_json(text(doc))

    async def all(self, now: float | None = None) -> list[Silence]:
        """Every silence, oldest first; ones expired longer than ``keep_expired_s`` are purged."""
        clock = time.time() if now is None else now
        docs = await self.redis.hgetall(self.key)
        silences = [Silence.model_validate_json(text(doc)) for doc in docs.values()]
        stale = [s.id for s in silences if s.ends_at + self.keep_expired_s < clock]
        if stale:
            await self.redis.hdel(self.key, *stale)
        return sorted((s for s in silences if s.id not in stale), key=lambda s: s.created_at)

    async def active(self, now: float | None = None) -> list[Silence]:
        clock = time.time() if now is None else now
        return [s for s in await self.all(clock) if s.state(clock) == "active"]

    async def expire(self, silence_id: str, now: float | None = None) -> Silence | None:
        """End a silence now (None if there is no such silence); expiring twice is harmless."""
        clock = time.time() if now is None else now
        silence = await self.get(silence_id)
        if silence is None:
            return None
        if silence.ends_at > clock:
            silence = silence.model_copy(update={"ends_at": clock})
            await self.redis.hset(self.key, silence.id, silence.model_dump_json())
        return silence

    # ---- web handlers (GET /silences, POST /silences, DELETE /silences/{id}) ----------------
    async def handle_list(self, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``?state=active|pending|expired`` filters; default lists the ones not expired."""
        now = time.time()
        wanted = (query or {}).get("state", "")
        if wanted and wanted not in ("active", "pending", "expired", "all"):
            raise SilenceRequestError(
                400, f"state must be active, pending, expired or all, got {wanted!r}"
            )
        silences = await self.all(now)
        if wanted != "all":
            silences = [
                s for s in silences
                if (s.state(now) == wanted if wanted else s.state(now) != "expired")
            ]  # fmt: skip
        return {"silences": [s.to_json_dict(now) for s in silences]}

    async def handle_create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Body: ``{"matchers": {"key": "AAPL"}, "duration": "1h" | "ends_at": <unix>,
        "starts_at"?: <unix>, "comment": "...", "created_by": "..."}``."""
        if not isinstance(body, Mapping):
            raise SilenceRequestError(400, "body must be a JSON object")
        unknown = set(body) - _SILENCE_FIELDS
        if unknown:
            raise SilenceRequestError(400, f"unknown fields: {sorted(unknown)}")
        try:
            matchers = AlertMatcher.model_validate(body.get("matchers") or {})
            duration = body.get("duration")
            silence = await self.create(
                matchers,
                duration_s=parse_duration(duration) if duration is not None else None,
                ends_at=_optional_float(body.get("ends_at"), "ends_at"),
                starts_at=_optional_float(body.get("starts_at"), "starts_at"),
                comment=str(body.get("comment", "")),
                created_by=str(body.get("created_by", "")),
            )
        except ValidationError as exc:
            raise SilenceRequestError(400, f"bad matchers: {exc.errors()[0]['msg']}") from None
        except ValueError as exc:
            raise SilenceRequestError(400, str(exc)) from None
        return {"silence": silence.to_json_dict(time.time())}

    async def handle_expire(self, silence_id: str) -> dict[str, Any]:
        silence = await self.expire(silence_id)
        if silence is None:
            raise SilenceRequestError(404, f"no silence {silence_id!r}")
        return {"silence": silence.to_json_dict(time.time())}


_SILENCE_FIELDS = frozenset(
    {"matchers", "duration", "ends_at", "starts_at", "comment", "created_by"}
)


def _optional_float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a unix time in seconds")
    return float(value)
