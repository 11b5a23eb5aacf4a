"""Webhook delivery state in Redis, so a restart neither resends nor drops a notification.

Redis layout (``P = vigil:{app_id}:webhooks``, ``E`` = an endpoint id):

* ``P:delivery:<delivery id>`` — hash: endpoint, notification id, Idempotency-Key, body, status
  (pending | delivered | dead), attempts, next_at, last_error, created_at. Delivered and dead
  records expire after ``alerting.retention_s``.
* ``P:due:E`` — pending deliveries waiting for an attempt, scored by next-attempt time.
* ``P:lease:E`` — pending deliveries being attempted, scored by when their lease runs out. A
  claim moves ids from ``due`` to ``lease`` atomically, so two processes never post the same
  notification concurrently; a lease that ran out (its holder crashed) is moved back by the next
  claim.
* ``P:age:E`` — every pending delivery scored by when it was created: the half-open circuit's
  probe takes the oldest, and deliveries past their maximum age are found here.

A pending delivery is in exactly one of ``due`` and ``lease``, and always in ``age``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from vigil.alerting.redis_text import text
from vigil.alerting.routing import Notification


@dataclass
class DeliveryRecord:
    delivery_id: str
    endpoint_id: str
    notification_id: str
    idempotency_key: str
    group_key: str
    body: bytes
    status: str  # pending | delivered | dead
    attempts: int
    next_at: float
    last_error: str
    created_at: float


_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
"""

# Leases that ran out go back to due (at once); used by both claims below.
_RECOVER_LAPSED = """
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, id in ipairs(lapsed) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], ARGV[1], id)
end
"""

# KEYS: due, lease. ARGV: now, limit, lease until. The due ones, earliest next attempt first.
_CLAIM_DUE = (
    _RECOVER_LAPSED
    + """
local want = tonumber(ARGV[2])
if want <= 0 then return {} end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, want)
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[3], id)
end
return ids
"""
)

# KEYS: due, lease, age. ARGV: now, limit, lease until, created at or before. The oldest waiting
# ones whatever their next-attempt time (a probe, or deliveries past their maximum age). At most
# ZCARD(lease) of the oldest are leased, so scanning limit + that many finds enough.
_CLAIM_OLDEST = (
    _RECOVER_LAPSED
    + """
local want = tonumber(ARGV[2])
if want <= 0 then return {} end
local scan = want + redis.call('ZCARD', KEYS[2])
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[4], 'LIMIT', 0, scan)
local picked = {}
for _, id in ipairs(ids) do
  if #picked >= want then break end
  if redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], ARGV[3], id)
    picked[#picked + 1] = id
  end
end
return picked
"""
)

# KEYS: due, lease, record. ARGV: id, at. Wait again until `at` without counting an attempt.
_RESCHEDULE = """
if redis.call('HGET', KEYS[3], 'status') ~= 'pending' then return 0 end
if not (redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZSCORE', KEYS[2], ARGV[1])) then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], 'next_at', ARGV[2])
return 1
"""

# KEYS: due, lease, record. ARGV: id. Undo a claim: back to due at its recorded next attempt.
_RESTORE = """
if redis.call('HGET', KEYS[3], 'status') ~= 'pending' then return 0 end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('ZADD', KEYS[1], redis.call('HGET', KEYS[3], 'next_at'), ARGV[1])
"""

# KEYS: due, age. ARGV: now, record key prefix. Every waiting delivery due now, oldest first
# (scored by its creation time); the record's next_at follows.
_RELEASE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
for _, id in ipairs(ids) do
  local born = redis.call('ZSCORE', KEYS[2], id) or ARGV[1]
  redis.call('ZADD', KEYS[1], born, id)
  redis.call('HSET', ARGV[2] .. id, 'next_at', born)
end
return #ids
"""


class DeliveryQueue:
    """Pending, delivered and dead webhook deliveries of one app, in Redis."""

    def __init__(self, redis: Redis, app_id: str, *, retention_s: float) -> None:
        self.redis = redis
        self.prefix = f"vigil:{app_id}:webhooks"
        self.retention_s = math.ceil(retention_s)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._claim_due = redis.register_script(_CLAIM_DUE)
        self._claim_oldest = redis.register_script(_CLAIM_OLDEST)
        self._reschedule = redis.register_script(_RESCHEDULE)
        self._restore = redis.register_script(_RESTORE)
        self._release = redis.register_script(_RELEASE)

    def record_key(self, delivery_id: str) -> str:
        return f"{self.prefix}:delivery:{delivery_id}"

    def due_key(self, endpoint: str) -> str:
        return f"{self.prefix}:due:{endpoint}"

    def lease_key(self, endpoint: str) -> str:
        return f"{self.prefix}:lease:{endpoint}"

    def age_key(self, endpoint: str) -> str:
        return f"{self.prefix}:age:{endpoint}"

    async def enqueue(
        self, endpoint: str, notification: Notification, body: bytes, now: float
    ) -> bool:
        """Record a pending delivery, due now; False if this notification already had one."""
        delivery_id = f"{notification.notification_id}@{endpoint}"
        fields: dict[str, str | bytes] = {
            "endpoint_id": endpoint,
            "notification_id": notification.notification_id,
            "idempotency_key": notification.notification_id,
            "group_key": notification.group_key,
            "body": body,
            "status": "pending",
            "attempts": "0",
            "next_at": repr(now),
            "last_error": "",
            "created_at": repr(now),
        }
        flat = [item for pair in fields.items() for item in pair]
        added = await self._enqueue(
            keys=[self.record_key(delivery_id), self.due_key(endpoint), self.age_key(endpoint)],
            args=[delivery_id, repr(now), *flat],
        )
        return bool(added)

    async def claim(self, endpoint: str, now: float, limit: int, lease_s: float) -> list[str]:
        """Up to ``limit`` due delivery ids (earliest next attempt first), leased for
        ``lease_s``. With ``limit`` 0 it only recovers leases that ran out."""
        ids = await self._claim_due(
            keys=[self.due_key(endpoint), self.lease_key(endpoint)],
            args=[repr(now), limit, repr(now + lease_s)],
        )
        return [text(i) for i in ids]

    async def claim_oldest(
        self, endpoint: str, now: float, limit: int, lease_s: float,
        created_before: float = math.inf,
    ) -> list[str]:  # fmt: skip
        """Up to ``limit`` of the oldest waiting deliveries created at or before
        ``created_before``, whatever their next-attempt time, leased for ``lease_s``."""
        ids = await self._claim_oldest(
            keys=[self.due_key(endpoint), self.lease_key(endpoint), self.age_key(endpoint)],
            args=[
                repr(now), limit, repr(now + lease_s),
                "+inf" if math.isinf(created_before) else repr(created_before),
            ],
        )  # fmt: skip
        return [text(i) for i in ids]

    async def next_due(self, endpoint: str) -> float | None:
        """When a waiting delivery is due or a lease runs out, whichever is first."""
        firsts: list[float] = []
        for key in (self.due_key(endpoint), self.lease_key(endpoint)):
            scored = await self.redis.zrange(key, 0, 0, withscores=True)
            firsts += [float(s) for _, s in cast(list[tuple[bytes | str, float]], scored)]
        return min(firsts, default=None)

    async def count_pending(self, endpoint: str) -> int:
        return int(await self.redis.zcard(self.age_key(endpoint)))

    async def load(self, delivery_id: str) -> DeliveryRecord | None:
        raw = await self.redis.hgetall(self.record_key(delivery_id))
        if not raw:
            return None
        doc = {text(k): v for k, v in raw.items()}
        body = doc["body"]
        return DeliveryRecord(
            delivery_id=delivery_id,
            endpoint_id=text(doc["endpoint_id"]),
            notification_id=text(doc["notification_id"]),
            idempotency_key=text(doc["idempotency_key"]),
            group_key=text(doc["group_key"]),
            body=body if isinstance(body, bytes) else body.encode(),
            status=text(doc["status"]),
            attempts=int(doc["attempts"]),
            next_at=float(doc["next_at"]),
            last_error=text(doc.get("last_error", b"")),
            created_at=float(doc.get("created_at", doc["next_at"])),
        )

    async def reschedule(self, endpoint: str, delivery_id: str, at: float) -> None:
        """Move a pending delivery's next attempt without counting an attempt (never revives a
        finished one)."""
        await self._reschedule(
            keys=[self.due_key(endpoint), self.lease_key(endpoint), self.record_key(delivery_id)],
            args=[delivery_id, repr(at)],
        )

    async def restore(self, endpoint: str, delivery_id: str) -> None:
        """Undo a claim: the delivery waits again for its recorded next-attempt time."""
        await self._restore(
            keys=[self.due_key(endpoint), self.lease_key(endpoint), self.record_key(delivery_id)],
            args=[delivery_id],
        )

    async def release(self, endpoint: str, now: float) -> int:
        """Every waiting delivery of ``endpoint`` due now, oldest first (the endpoint recovered:
        its backlog need not sit out back-offs earned while it was down). Returns how many."""
        moved = await self._release(
            keys=[self.due_key(endpoint), self.age_key(endpoint)],
            args=[repr(now), f"{self.prefix}:delivery:"],
        )
        return int(moved)

    async def record_retry(
        self, record: DeliveryRecord, attempts: int, at: float, error: str
    ) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.record_key(record.delivery_id),
                mapping={"attempts": attempts, "next_at": repr(at), "last_error": error},
            )
            pipe.zrem(self.lease_key(record.endpoint_id), record.delivery_id)
            pipe.zadd(self.due_key(record.endpoint_id), {record.delivery_id: at})
            await pipe.execute()

    async def record_final(
        self, record: DeliveryRecord, status: str, attempts: int, error: str = ""
    ) -> None:
        """Mark delivered or dead: no longer pending, kept ``retention_s`` to answer "done?"."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.record_key(record.delivery_id),
                mapping={"status": status, "attempts": attempts, "last_error": error,
                         "next_at": "0"},
            )  # fmt: skip
            pipe.expire(self.record_key(record.delivery_id), self.retention_s)
            for key in self._sets(record.endpoint_id):
                pipe.zrem(key, record.delivery_id)
            await pipe.execute()

    async def forget(self, endpoint: str, delivery_id: str) -> None:
        """Drop an id from the pending sets (its record is gone or already finished)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in self._sets(endpoint):
                pipe.zrem(key, delivery_id)
            await pipe.execute()

    def _sets(self, endpoint: str) -> tuple[str, str, str]:
        return self.due_key(endpoint), self.lease_key(endpoint), self.age_key(endpoint)
