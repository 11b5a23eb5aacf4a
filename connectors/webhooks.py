"""Webhook delivery: signed POSTs with retries, a circuit breaker and a retry budget per endpoint,
and the delivery state kept in Redis so a restart neither resends nor drops a notification.

Redis layout (``P = vigil:{app_id}:webhooks``):

* ``P:delivery:<delivery id>`` — hash: endpoint, notification id, Idempotency-Key, body, status
  (pending | delivered | dead), attempts, next_at, last_error. Delivered and dead records expire
  after ``alerting.retention_s``.
* ``P:due:<endpoint id>`` — sorted set of pending delivery ids scored by next-attempt time. A
  worker claims due ids by pushing their score forward by a lease, so two workers (or a worker
  restarted after a crash) never post the same notification concurrently, and a claim dropped by
  a crash is picked up again once its lease runs out.

Every request carries ``Idempotency-Key`` (the same on every retry) because at-least-once is the
best HTTP allows: a receiver that answered 200 to a request whose answer was lost sees it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import httpx
from prometheus_client import Counter
from redis.asyncio import Redis

from connectors.alert_routing import Notification, alert_identity
from connectors.circuit import CircuitBreaker, RetryBudget, full_jitter_backoff
from connectors.signing import SIGNATURE_HEADER, sign
from vigil import __version__
from vigil.records import Alert
from vigil.settings import WebhookEndpoint

log = logging.getLogger(__name__)

WEBHOOK_DELIVERIES = Counter(
    "vigil_webhook_deliveries",
    "Webhook delivery attempts by outcome (delivered, failed = will retry, dead = given up).",
    ["endpoint", "outcome"],
)
WEBHOOK_RETRIES_THROTTLED = Counter(
    "vigil_webhook_retries_throttled",
    "Retries held back because the endpoint's retry budget (retries_per_minute) was spent.",
    ["endpoint"],
)

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
RETRYABLE_STATUS = frozenset({408, 425, 429})

DeadLetterSink = Callable[[str, bytes, str, str | None], Awaitable[None]]
"""``(reason, body, source, key)`` → the dead-letter topic; must be durable when it returns."""


class AlertSink(Protocol):
    """Where the stream hands alerts; returns False for an alert it had already accepted."""

    async def submit(self, alert: Alert) -> bool: ...


# ---- endpoints and payloads (pure) -----------------------------------------------------------
def endpoint_id(endpoint: WebhookEndpoint) -> str:
    """Stable id of an endpoint for Redis keys: the URL and format it is posted in."""
    return hashlib.sha256(f"{endpoint.url}|{endpoint.format}".encode()).hexdigest()[:16]


def endpoint_label(endpoint: WebhookEndpoint) -> str:
    """Name in metrics and dead letters: ``name`` if set, else the URL without credentials, query
    or token-like path segments (Slack-style URLs carry their secret in the path)."""
    if endpoint.name:
        return endpoint.name
    parts = urlsplit(endpoint.url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    segments = parts.path.split("/")
    kept = [s if len(s) < 16 else "…" for s in segments]
    label = f"{parts.scheme}://{netloc}{'/'.join(kept)}"
    if kept != segments or parts.query or parts.username or parts.password:
        label += "#" + hashlib.sha256(endpoint.url.encode()).hexdigest()[:8]
    return label


def endpoint_wants(endpoint: WebhookEndpoint, alert: Alert) -> bool:
    return SEVERITY_RANK[alert.severity] >= SEVERITY_RANK[endpoint.min_severity] and (
        fnmatch.fnmatchcase(alert.key, endpoint.key_pattern)
    )


def idempotency_key(notification: Notification) -> str:
    """``<alert_id>:<status>`` for a notification of one alert, ``group-<hash>`` for several."""
    return notification.notification_id


def render_json(notification: Notification, alerts: Sequence[Alert]) -> dict[str, Any]:
    status = "firing" if any(a.status == "firing" for a in alerts) else "resolved"
    return {
        "version": 1,
        "notification_id": notification.notification_id,
        "group_key": notification.group_key,
        "status": status,
        "alerts": [
            a.model_dump(mode="json") | {"idempotency_key": alert_identity(a)} for a in alerts
        ],
    }


_SLACK_MAX_ALERTS = 20
_SEVERITY_ICON = {
    "info": ":information_source:",
    "warning": ":warning:",
    "critical": ":rotating_light:",
}


def render_slack(notification: Notification, alerts: Sequence[Alert]) -> dict[str, Any]:
    """Slack incoming-webhook payload: ``text`` for notifications, ``blocks`` for the message."""
    firing = [a for a in alerts if a.status == "firing"]
    resolved = [a for a in alerts if a.status == "resolved"]
    parts = [f"{len(firing)} firing"] if firing else []
    parts += [f"{len(resolved)} resolved"] if resolved else []
    counts = ", ".join(parts)
    title = f"Vigil: {counts} ({notification.group_key})"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}}
    ]
    for alert in alerts[:_SLACK_MAX_ALERTS]:
        icon = (
            ":white_check_mark:" if alert.status == "resolved" else _SEVERITY_ICON[alert.severity]
        )
        last = f"{alert.recent_values[-1]:.6g}" if alert.recent_values else "n/a"
        expected = f"{alert.forecast[0]:.6g}" if alert.forecast else "n/a"
        text = (
            f"{icon} *{alert.key}* ({alert.group}) {alert.status.upper()} {alert.severity}\n"
            f"score {alert.score:.3f} · last {last} · forecast {expected} · model "
            f"{alert.provenance.model_version}"
        )
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    if len(alerts) > _SLACK_MAX_ALERTS:
        more = f"…and {len(alerts) - _SLACK_MAX_ALERTS} more"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": more}]})
    return {"text": title, "blocks": blocks}


def render_body(
    endpoint: WebhookEndpoint, notification: Notification, alerts: Sequence[Alert]
) -> bytes:
    render = render_slack if endpoint.format == "slack" else render_json
    return json.dumps(render(notification, alerts), separators=(",", ":")).encode()


# ---- delivery state in Redis -----------------------------------------------------------------
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[3], id) end
return ids
"""

_RESCHEDULE = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], 'next_at', ARGV[2])
return 1
"""

_RESTORE = """
if redis.call('HGET', KEYS[2], 'status') ~= 'pending' then return 0 end
local at = redis.call('HGET', KEYS[2], 'next_at')
return redis.call('ZADD', KEYS[1], 'XX', at, ARGV[1])
"""


class DeliveryQueue:
    """Pending, delivered and dead webhook deliveries of one app, in Redis."""

    def __init__(self, redis: Redis, app_id: str, *, retention_s: float) -> None:
        self.redis = redis
        self.prefix = f"vigil:{app_id}:webhooks"
        self.retention_s = math.ceil(retention_s)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._claim = redis.register_script(_CLAIM)
        self._reschedule = redis.register_script(_RESCHEDULE)
        self._restore = redis.register_script(_RESTORE)

    def record_key(self, delivery_id: str) -> str:
        return f"{self.prefix}:delivery:{delivery_id}"

    def due_key(self, endpoint: str) -> str:
        return f"{self.prefix}:due:{endpoint}"

    async def enqueue(
        self, endpoint: str, notification: Notification, body: bytes, now: float
    ) -> bool:
        """Record a pending delivery, due now; False if this notification already had one."""
        delivery_id = f"{notification.notification_id}@{endpoint}"
        fields: dict[str, str | bytes] = {
            "endpoint_id": endpoint,
            "notification_id": notification.notification_id,
            "idempotency_key": idempotency_key(notification),
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
            keys=[self.record_key(delivery_id), self.due_key(endpoint)],
            args=[delivery_id, repr(now), *flat],
        )
        return bool(added)

    async def claim(self, endpoint: str, now: float, limit: int, lease_s: float) -> list[str]:
        """Up to ``limit`` due delivery ids, hidden from other claims for ``lease_s``."""
        if limit <= 0:
            return []
        ids = await self._claim(
            keys=[self.due_key(endpoint)], args=[repr(now), limit, repr(now + lease_s)]
        )
        return [_text(i) for i in ids]

    async def next_due(self, endpoint: str) -> float | None:
        scored = await self.redis.zrange(self.due_key(endpoint), 0, 0, withscores=True)
        first = cast(list[tuple[bytes | str, float]], scored)
        return float(first[0][1]) if first else None

    async def count_pending(self, endpoint: str) -> int:
        return int(await self.redis.zcard(self.due_key(endpoint)))

    async def load(self, delivery_id: str) -> DeliveryRecord | None:
        raw = await self.redis.hgetall(self.record_key(delivery_id))
        if not raw:
            return None
        doc = {_text(k): v for k, v in raw.items()}
        body = doc["body"]
        return DeliveryRecord(
            delivery_id=delivery_id,
            endpoint_id=_text(doc["endpoint_id"]),
            notification_id=_text(doc["notification_id"]),
            idempotency_key=_text(doc["idempotency_key"]),
            group_key=_text(doc["group_key"]),
            body=body if isinstance(body, bytes) else body.encode(),
            status=_text(doc["status"]),
            attempts=int(doc["attempts"]),
            next_at=float(doc["next_at"]),
            last_error=_text(doc.get("last_error", b"")),
        )

    async def reschedule(self, endpoint: str, delivery_id: str, at: float) -> None:
        """Move a pending delivery's next attempt without counting an attempt (never revives a
        finished one)."""
        await self._reschedule(
            keys=[self.due_key(endpoint), self.record_key(delivery_id)],
            args=[delivery_id, repr(at)],
        )

    async def restore(self, endpoint: str, delivery_id: str) -> None:
        """Put a pending delivery back at its recorded next-attempt time (undo a stray claim)."""
        await self._restore(
            keys=[self.due_key(endpoint), self.record_key(delivery_id)], args=[delivery_id]
        )

    async def record_retry(
        self, record: DeliveryRecord, attempts: int, at: float, error: str
    ) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.record_key(record.delivery_id),
                mapping={"attempts": attempts, "next_at": repr(at), "last_error": error},
            )
            pipe.zadd(self.due_key(record.endpoint_id), {record.delivery_id: at})
            await pipe.execute()

    async def record_final(
        self, record: DeliveryRecord, status: str, attempts: int, error: str = ""
    ) -> None:
        """Mark delivered or dead: out of the due set, kept ``retention_s`` to answer "done?"."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.record_key(record.delivery_id),
                mapping={"status": status, "attempts": attempts, "last_error": error,
                         "next_at": "0"},
            )  # fmt: skip
            pipe.expire(self.record_key(record.delivery_id), self.retention_s)
            pipe.zrem(self.due_key(record.endpoint_id), record.delivery_id)
            await pipe.execute()

    async def forget(self, endpoint: str, delivery_id: str) -> None:
        await self.redis.zrem(self.due_key(endpoint), delivery_id)


# ---- one endpoint ----------------------------------------------------------------------------
@dataclass
class AttemptResult:
    ok: bool
    retryable: bool = True
    error: str = ""
    retry_after_s: float | None = None
    endpoint_answered: bool = False  # an HTTP status came back (the endpoint is up)


class WebhookDelivery:
    """Delivers one endpoint's pending notifications from Redis: at most ``max_concurrency`` at a
    time, retried with full-jitter back-off within a per-minute retry budget, behind a circuit
    breaker; after ``max_attempts`` the notification goes to the dead-letter topic."""

    def __init__(
        self, endpoint: WebhookEndpoint, queue: DeliveryQueue, *, dead_letters: DeadLetterSink,
        signing_key: str | bytes | None, poll_interval_s: float = 0.25,
    ) -> None:  # fmt: skip
        self.endpoint = endpoint
        self.queue = queue
        self.id = endpoint_id(endpoint)
        self.name = endpoint_label(endpoint)
        self.breaker = CircuitBreaker(endpoint.failure_threshold, endpoint.cooldown_s)
        self.budget = RetryBudget(endpoint.retries_per_minute)
        self._dead_letters = dead_letters
        self._signing_key = signing_key
        self._poll_s = poll_interval_s
        self._lease_s = endpoint.timeout_s + 30.0
        self._client: httpx.AsyncClient | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._reclaimed: set[str] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    def wants(self, alert: Alert) -> bool:
        return endpoint_wants(self.endpoint, alert)

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=self.endpoint.timeout_s,
            limits=httpx.Limits(max_connections=self.endpoint.max_concurrency),
            headers={"User-Agent": f"vigil/{__version__}"},
        )
        self._stopping = False
        self._pump_task = asyncio.create_task(self._pump(), name=f"webhook-pump:{self.name}")

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop claiming, let attempts in flight finish (up to ``grace_s``), then close."""
        self._stopping = True
        self._wake.set()
        if self._pump_task is not None:
            await self._pump_task
            self._pump_task = None
        inflight = dict(self._inflight)
        if inflight:
            grace = self.endpoint.timeout_s + 1.0 if grace_s is None else grace_s
            _, late = await asyncio.wait(inflight.values(), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            for delivery_id, task in inflight.items():
                if task in late:  # due again at once for whoever runs next
                    await self.queue.reschedule(self.id, delivery_id, time.time())
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _pump(self) -> None:
        while not self._stopping:
            try:
                await self._claim_and_start()
                timeout = self._poll_s
                if self.breaker.state == "open":
                    timeout = min(timeout, max(0.001, self.breaker.retry_after()))
                due = await self.queue.next_due(self.id)
                if due is not None:
                    timeout = min(timeout, max(0.001, due - time.time()))
            except Exception:  # Redis hiccup: keep the loop, try again after a pause
                log.exception("webhook %s: pump error", self.name)
                timeout = self._poll_s
            if self._stopping:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _claim_and_start(self) -> None:
        while not self._stopping:
            slots = self.breaker.permits(self.endpoint.max_concurrency - len(self._inflight))
            ids = await self.queue.claim(self.id, time.time(), slots, self._lease_s)
            for delivery_id in ids:
                if delivery_id in self._inflight:  # its attempt is just finishing: undo after
                    self._reclaimed.add(delivery_id)
                    continue
                self._inflight[delivery_id] = asyncio.create_task(self._attempt(delivery_id))
            if not ids or len(ids) < slots:
                return

    async def _attempt(self, delivery_id: str) -> None:
        try:
            await self._attempt_once(delivery_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # left claimed: due again when the lease ends
            log.exception("webhook %s: delivery %s failed unexpectedly", self.name, delivery_id)
        finally:
            await self._settle(delivery_id)

    async def _settle(self, delivery_id: str) -> None:
        """Leave the in-flight set right after the attempt's last write (no await in between),
        and undo a claim the pump made while the attempt was finishing: that claim pushed the
        delivery a lease ahead, which would stall its retry for the whole lease."""
        self._inflight.pop(delivery_id, None)
        self._wake.set()
        if delivery_id in self._reclaimed:
            self._reclaimed.discard(delivery_id)
            await self.queue.restore(self.id, delivery_id)

    async def _attempt_once(self, delivery_id: str) -> None:
        record = await self.queue.load(delivery_id)
        if record is None or record.status != "pending":
            await self.queue.forget(self.id, delivery_id)
            return
        now = time.time()
        if record.attempts > 0 and not self.budget.try_acquire():
            WEBHOOK_RETRIES_THROTTLED.labels(self.name).inc()
            await self.queue.reschedule(self.id, delivery_id, now + self.budget.wait_s())
            return
        if not self.breaker.try_acquire():
            await self.queue.reschedule(
                self.id, delivery_id, now + max(self.breaker.retry_after(), 0.001)
            )
            return
        attempts = record.attempts + 1
        result = await self.post(record, attempts)
        if result.ok or (result.endpoint_answered and not result.retryable):
            self.breaker.record_success()
        else:
            self.breaker.record_failure()
        if result.ok:
            await self.queue.record_final(record, "delivered", attempts)
            WEBHOOK_DELIVERIES.labels(self.name, "delivered").inc()
            return
        if result.retryable and attempts < self.endpoint.max_attempts:
            delay = full_jitter_backoff(
                attempts, self.endpoint.backoff_base_s, self.endpoint.backoff_max_s
            )
            if result.retry_after_s is not None:
                delay = max(delay, min(result.retry_after_s, self.endpoint.backoff_max_s))
            await self.queue.record_retry(record, attempts, time.time() + delay, result.error)
            WEBHOOK_DELIVERIES.labels(self.name, "failed").inc()
            return
        reason = (
            f"webhook gave up after {attempts} attempt(s): {result.error}"
            if result.retryable
            else f"webhook refused (not retried): {result.error}"
        )
        try:
            await self._dead_letters(reason, record.body, f"webhook:{self.name}", record.group_key)
        except Exception as exc:  # keep it pending rather than lose it; try again later
            log.warning("webhook %s: dead letter failed (%s); will retry", self.name, exc)
            at = time.time() + self.endpoint.backoff_max_s
            await self.queue.record_retry(record, attempts - 1, at, f"{result.error}; {exc}")
            return
        await self.queue.record_final(record, "dead", attempts, result.error)
        WEBHOOK_DELIVERIES.labels(self.name, "dead").inc()
        log.warning("webhook %s: %s dead-lettered: %s", self.name, record.notification_id, reason)

    async def post(self, record: DeliveryRecord, attempt: int) -> AttemptResult:
        """One signed POST; the whole exchange is bounded by ``timeout_s``."""
        if self._client is None:
            raise RuntimeError("WebhookDelivery.start() was not called")
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": record.idempotency_key,
            "X-Vigil-Notification": record.notification_id,
            "X-Vigil-Attempt": str(attempt),
        }
        if self._signing_key:
            headers[SIGNATURE_HEADER] = sign(record.body, self._signing_key)
        try:
            async with asyncio.timeout(self.endpoint.timeout_s):
                response = await self._client.post(
                    self.endpoint.url, content=record.body, headers=headers
                )
        except TimeoutError:
            return AttemptResult(False, error=f"no answer within {self.endpoint.timeout_s:g}s")
        except httpx.HTTPError as exc:
            return AttemptResult(False, error=f"{type(exc).__name__}: {exc}".rstrip(": "))
        if 200 <= response.status_code < 300:
            return AttemptResult(True, endpoint_answered=True)
        snippet = response.text[:200].replace("\n", " ")
        status = response.status_code
        return AttemptResult(
            False,
            retryable=status >= 500 or status in RETRYABLE_STATUS,
            error=f"HTTP {status} {snippet}".strip(),
            retry_after_s=_retry_after(response.headers.get("Retry-After")),
            endpoint_answered=True,
        )


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (the delta-seconds form; dates are ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
