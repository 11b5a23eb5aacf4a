"""The grouping buffer in Redis: accepted alerts wait here until their group is due, then leave
as one :class:`~vigil.alerting.routing.Notification` through an outbox.

Alerts with the same group key that arrive within ``group_wait_s`` go out together; alerts
arriving after a group was notified wait ``group_interval_s`` after that notification. Every
alert is accepted once per (alert id, status), so replaying the alerts topic is harmless and
"resolved" is its own event. Lua scripts make each step atomic: a restart neither loses an
accepted alert nor sends one twice.

Redis layout (``P = vigil:{app_id}:webhooks``): ``P:seen:<alert_id>:<status>`` (dedupe, kept
``retention_s``), ``P:group:<group key>`` (alerts waiting), ``P:groups:due`` / ``P:groups:last``
(when each group is due / was last sent), ``P:outbox`` (taken, not yet routed), ``P:firing`` and
``P:muted:<alert_id>`` (for inhibition and for resolves that follow a muted firing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import cast

from redis.asyncio import Redis

from vigil.alerting.alert_log import AlertLog
from vigil.alerting.redis_text import text
from vigil.alerting.routing import Notification, alert_identity, group_key
from vigil.records import Alert
from vigil.settings import AlertingConfig

# Accept one alert: dedupe on (alert id, status), append it to the alert log, join its group.
# One script, so a crash can never leave an alert logged but not queued for delivery (or the
# reverse), and a replay of the alerts topic finds it already accepted and changes nothing.
_ACCEPT_ALERT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then return 0 end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[10], '*', 'alert', ARGV[2], 'ts', ARGV[11])
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

    def __init__(self, redis: Redis, app_id: str, config: AlertingConfig, *, log: AlertLog) -> None:
        self.redis = redis
        self.config = config
        self.log = log
        self.prefix = f"vigil:{app_id}:webhooks"
        self._due = f"{self.prefix}:groups:due"
        self._last = f"{self.prefix}:groups:last"
        self._firing = f"{self.prefix}:firing"
        self._outbox = f"{self.prefix}:outbox"
        self._accept = redis.register_script(_ACCEPT_ALERT)
        self._take = redis.register_script(_TAKE_GROUP)

    def _group(self, key: str) -> str:
        return f"{self.prefix}:group:{key}"

    async def add(self, alert: Alert, now: float) -> bool:
        """Accept an alert: log it and queue it in its group, atomically (False: this alert id
        and status was accepted before, nothing changed)."""
        gk = group_key(alert, self.config.group_by)
        identity = alert_identity(alert)
        added = await self._accept(
            keys=[
                f"{self.prefix}:seen:{identity}", self._group(gk), self._due, self._last,
                self._firing, self.log.key,
            ],
            args=[
                identity, alert.model_dump_json(), math.ceil(self.config.retention_s), repr(now),
                repr(self.config.group_wait_s), repr(self.config.group_interval_s), gk,
                alert.alert_id, alert.status, self.log.maxlen, str(alert.start),
            ],
        )  # fmt: skip
        return bool(added)

    async def due_groups(self, now: float, limit: int = 100) -> list[str]:
        keys = await self.redis.zrangebyscore(self._due, "-inf", repr(now), start=0, num=limit)
        return [text(k) for k in cast(list[bytes | str], keys)]

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
        nid, gk, alerts = json.loads(text(doc))
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
        alerts = [Alert.model_validate_json(text(doc)) for doc in docs.values()]
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
