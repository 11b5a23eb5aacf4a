"""Alertmanager-style routing between the alerts topic and the webhooks: grouping, inhibition,
silences.

* **Grouping** — alerts with the same group key (``alerting.group_by``, default the series key)
  that arrive within ``group_wait_s`` go out as ONE notification; alerts arriving after a group was
  notified wait ``group_interval_s`` after that notification. Every alert is accepted once per
  (alert id, status), so replaying the alerts topic is harmless and "resolved" is its own event.
* **Inhibition** — while an alert matching a rule's ``source_match`` fires, alerts matching its
  ``target_match`` (equal on the ``equal`` fields) are not sent: a MARKET halt mutes the tickers.
* **Silences** — matchers with a time range, created by people, held in Redis.

A "resolved" goes out exactly when its "firing" went out: if the firing was silenced or
inhibited the receiver never opened the incident, so it is not told it closed; and a resolve of
an incident it was told about is never muted, or the incident would stay open there forever.

The grouping buffer lives in Redis (Lua scripts make each step atomic), so a restart neither
loses an accepted alert nor sends one twice. The pure rules come first; Redis stores after.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from pydantic import BaseModel, Field, ValidationError
from redis.asyncio import Redis

from vigil.records import Alert
from vigil.settings import AlertingConfig, AlertMatcher, InhibitRule

GroupField = Literal["key", "group", "severity"]


# ---- pure rules ------------------------------------------------------------------------------
def alert_identity(alert: Alert) -> str:
    """``<alert_id>:<status>``: the unit of deduplication and the Idempotency-Key of one alert."""
    return f"{alert.alert_id}:{alert.status}"


def matches(matcher: AlertMatcher, alert: Alert) -> bool:
    return (
        fnmatch.fnmatchcase(alert.key, matcher.key)
        and fnmatch.fnmatchcase(alert.group, matcher.group)
        and fnmatch.fnmatchcase(alert.severity, matcher.severity)
    )


def group_key(alert: Alert, by: Sequence[GroupField]) -> str:
    """``key=AAPL`` or ``group=stocks,severity=critical``: which notification an alert joins."""
    if not by:
        return "all"
    return ",".join(f"{name}={getattr(alert, name)}" for name in by)


def inhibiting_alert(
    target: Alert, firing: Iterable[Alert], rules: Sequence[InhibitRule]
) -> Alert | None:
    """The firing alert that mutes ``target`` under some rule, if any (never ``target`` itself)."""
    sources = [a for a in firing if a.status == "firing" and a.alert_id != target.alert_id]
    for rule in rules:
        if not matches(rule.target_match, target):
            continue
        for source in sources:
            if matches(rule.source_match, source) and all(
                getattr(source, name) == getattr(target, name) for name in rule.equal
            ):
                return source
    return None


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


@dataclass
class Notification:
    """Alerts of one group that go out together; its id is stable across retries and restarts."""

    notification_id: str
    group_key: str
    alerts: list[Alert]

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "firing" if any(a.status == "firing" for a in self.alerts) else "resolved"


@dataclass
class RoutingDecision:
    send: list[Alert] = field(default_factory=list)
    suppressed: list[tuple[Alert, str]] = field(default_factory=list)  # (alert, why)


def route(
    alerts: Sequence[Alert], *, now: float, silences: Sequence[Silence], firing: Sequence[Alert],
    rules: Sequence[InhibitRule], firing_suppressed: set[str],
) -> RoutingDecision:  # fmt: skip
    """Which alerts of a notification go out. ``firing_suppressed``: ids whose firing was muted."""
    decision = RoutingDecision()
    muted_here: set[str] = set()  # a firing muted in this very notification mutes its resolve too
    for alert in alerts:
        if alert.status == "resolved":
            if alert.alert_id in firing_suppressed or alert.alert_id in muted_here:
                decision.suppressed.append((alert, "its firing notification was suppressed"))
            else:
                decision.send.append(alert)
            continue
        silence = next((s for s in silences if s.mutes(alert, now)), None)
        if silence is not None:
            decision.suppressed.append((alert, f"silenced by {silence.id}"))
            muted_here.add(alert.alert_id)
            continue
        source = inhibiting_alert(alert, firing, rules)
        if source is not None:
            decision.suppressed.append((alert, f"inhibited by {source.alert_id} ({source.key})"))
            muted_here.add(alert.alert_id)
            continue
        decision.send.append(alert)
    return decision


# ---- Redis stores ----------------------------------------------------------------------------
def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_ADD_ALERT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if not redis.call('ZSCORE', KEYS[3], ARGV[7]) then
  local now = tonumber(ARGV[4])
  local at = now + tonumber(ARGV[5])
  local last = redis.call('HGET', KEYS[4], ARGV[7])
  if last and tonumber(last) + tonumber(ARGV[6]) > now then
    at = tonumber(last) + tonumber(ARGV[6])
  end
  redis.call('ZADD', KEYS[3], at, ARGV[7])
end
if ARGV[9] == 'firing' then
  redis.call('HSET', KEYS[5], ARGV[8], ARGV[2])
else
  redis.call('HDEL', KEYS[5], ARGV[8])
end
return 1
"""

# Move a due group's alerts into the outbox as one notification, atomically.
_TAKE_GROUP = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return false end
local flat = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
if #flat == 0 then return false end
local members, by_member = {}, {}
for i = 1, #flat, 2 do
  members[#members + 1] = flat[i]
  by_member[flat[i]] = flat[i + 1]
end
table.sort(members)
local nid = members[1]
if #members > 1 then
  nid = 'group-' .. string.sub(redis.sha1hex(table.concat(members, '\\n')), 1, 20)
end
local alerts = {}
for _, m in ipairs(members) do alerts[#alerts + 1] = by_member[m] end
local doc = cjson.encode({nid, ARGV[1], alerts})
redis.call('HSET', KEYS[4], nid, doc)
return doc
"""


class AlertGroupBuffer:
    """Accepted alerts waiting for their group to be due, the notifications taken from it (the
    outbox, until routed), the index of firing alerts (for inhibition) and which firings were
    muted."""

    def __init__(self, redis: Redis, app_id: str, config: AlertingConfig) -> None:
        self.redis = redis
        self.config = config
        self.prefix = f"vigil:{app_id}:webhooks"
        self._due = f"{self.prefix}:groups:due"
        self._last = f"{self.prefix}:groups:last"
        self._firing = f"{self.prefix}:firing"
        self._outbox = f"{self.prefix}:outbox"
        self._add = redis.register_script(_ADD_ALERT)
        self._take = redis.register_script(_TAKE_GROUP)

    def _group(self, key: str) -> str:
        return f"{self.prefix}:group:{key}"

    async def add(self, alert: Alert, now: float) -> bool:
        """Accept an alert (False: this alert id and status was accepted before)."""
        gk = group_key(alert, self.config.group_by)
        identity = alert_identity(alert)
        added = await self._add(
            keys=[
                f"{self.prefix}:seen:{identity}", self._group(gk), self._due, self._last,
                self._firing,
            ],
            args=[
                identity, alert.model_dump_json(), math.ceil(self.config.retention_s), repr(now),
                repr(self.config.group_wait_s), repr(self.config.group_interval_s), gk,
                alert.alert_id, alert.status,
            ],
        )  # fmt: skip
        return bool(added)

    async def due_groups(self, now: float, limit: int = 100) -> list[str]:
        keys = await self.redis.zrangebyscore(self._due, "-inf", repr(now), start=0, num=limit)
        return [_text(k) for k in cast(list[bytes | str], keys)]

    async def next_due(self) -> float | None:
        scored = await self.redis.zrange(self._due, 0, 0, withscores=True)
        first = cast(list[tuple[bytes | str, float]], scored)
        return float(first[0][1]) if first else None

    async def take(self, group: str, now: float) -> Notification | None:
        """Atomically turn a due group into an outbox notification (None if another took it)."""
        doc = await self._take(
            keys=[self._due, self._group(group), self._last, self._outbox], args=[group, repr(now)]
        )
        return None if doc is None else self._notification(doc)

    @staticmethod
    def _notification(doc: bytes | str) -> Notification:
        nid, gk, alerts = json.loads(_text(doc))
        return Notification(nid, gk, [Alert.model_validate_json(a) for a in alerts])

    async def outbox(self) -> list[Notification]:
        """Notifications taken but not yet routed (a crash in between); routing is idempotent."""
        docs = await self.redis.hgetall(self._outbox)
        return [self._notification(doc) for doc in docs.values()]

    async def routed(self, notification_id: str) -> None:
        await self.redis.hdel(self._outbox, notification_id)

    async def firing(self, now: float) -> list[Alert]:
        """Alerts firing now (for inhibition). One that started longer than ``retention_s`` ago
        and never resolved (its resolve was lost) is dropped, so it cannot inhibit forever."""
        docs = await self.redis.hgetall(self._firing)
        alerts = [Alert.model_validate_json(_text(doc)) for doc in docs.values()]
        stale = [a.alert_id for a in alerts if a.start < now - self.config.retention_s]
        if stale:
            await self.redis.hdel(self._firing, *stale)
        return [a for a in alerts if a.alert_id not in stale]

    async def mark_firing_suppressed(self, alert_ids: Iterable[str]) -> None:
        ttl = math.ceil(self.config.retention_s)
        async with self.redis.pipeline(transaction=False) as pipe:
            for alert_id in alert_ids:
                pipe.set(f"{self.prefix}:muted:{alert_id}", "1", ex=ttl)
            await pipe.execute()

    async def firing_suppressed(self, alert_ids: Sequence[str]) -> set[str]:
        if not alert_ids:
            return set()
        flags = await self.redis.mget([f"{self.prefix}:muted:{a}" for a in alert_ids])
        return {a for a, flag in zip(alert_ids, flags, strict=True) if flag is not None}


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
        return None if doc is None else Silence.model_validate_json(_text(doc))

    async def all(self, now: float | None = None) -> list[Silence]:
        """Every silence, oldest first; ones expired longer than ``keep_expired_s`` are purged."""
        clock = time.time() if now is None else now
        docs = await self.redis.hgetall(self.key)
        silences = [Silence.model_validate_json(_text(doc)) for doc in docs.values()]
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
