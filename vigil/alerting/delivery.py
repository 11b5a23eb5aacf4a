"""Webhook delivery to one endpoint: signed POSTs with retries, a circuit breaker and a retry
budget, driven by the delivery state in Redis (:mod:`.delivery_queue`).

How a failing endpoint is treated, and why:

1. **Closed**: due deliveries go out, ``max_concurrency`` at a time; a failure is retried after a
   full-jitter back-off. While the endpoint is failing (from a failure to the next success)
   retries also spend the retry budget; once an attempt succeeds they go at full speed again.
2. **Open** (``failure_threshold`` failures in a row): nothing is attempted for ``cooldown_s``.
3. **Half-open**: one probe goes out, carrying the OLDEST pending notification (not whichever
   became due first), so the notification closest to being given up is the one that makes
   progress. Probes skip the retry budget: the breaker already limits them.
4. **Recovered** (a probe succeeded): every waiting delivery becomes due at once, oldest first:
   the backlog drains at ``max_concurrency`` rather than sitting out back-offs (or a retry
   budget) earned while the endpoint was down.
5. **Never recovers**: a delivery is dead-lettered after ``max_attempts`` attempts or, while the
   circuit is not closed, once it is older than its maximum age, whichever comes first. The age
   bound defaults to the endpoint's retry window (all back-off ceilings plus all timeouts), so
   an open circuit never keeps a notification longer than its retries would have without one;
   a healthy endpoint that is merely slow keeps its backlog until delivered.

Every request carries ``Idempotency-Key`` (the same on every retry) because at-least-once is the
best HTTP allows: a receiver that answered 200 to a request whose answer was lost sees it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from prometheus_client import Counter

from vigil import __version__
from vigil.alerting.circuit import CircuitBreaker, RetryBudget, full_jitter_backoff
from vigil.alerting.delivery_queue import DeliveryQueue, DeliveryRecord
from vigil.alerting.payloads import endpoint_id, endpoint_label, endpoint_wants
from vigil.alerting.signing import SIGNATURE_HEADER, sign
from vigil.outage import QuietFailures
from vigil.records import Alert
from vigil.settings import WebhookEndpoint

log = logging.getLogger(__name__)
# httpx logs every request's full URL at INFO, and webhook URLs carry tokens (Slack's path,
# a query key): Vigil logs deliveries itself, with the URL masked.
logging.getLogger("httpx").setLevel(logging.WARNING)

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

RETRYABLE_STATUS = frozenset({408, 425, 429})

DeadLetterSink = Callable[[str, bytes, str, str | None], Awaitable[None]]
"""``(reason, body, source, key)`` → the dead-letter topic; must be durable when it returns."""


def retry_window_s(endpoint: WebhookEndpoint) -> float:
    """The longest ``max_attempts`` attempts can take on their own schedule: every back-off
    ceiling plus every timeout. The default maximum age of a pending delivery."""
    backoffs = sum(
        min(endpoint.backoff_max_s, endpoint.backoff_base_s * 2.0 ** min(k, 62))
        for k in range(endpoint.max_attempts - 1)
    )
    return backoffs + endpoint.max_attempts * endpoint.timeout_s


@dataclass
class AttemptResult:
    ok: bool
    retryable: bool = True
    error: str = ""
    retry_after_s: float | None = None
    endpoint_answered: bool = False  # an HTTP status came back (the endpoint is up)


class WebhookDelivery:
    """Delivers one endpoint's pending notifications from Redis (see the module docstring for
    the circuit breaker, the retry budget and when a notification is given up)."""

    def __init__(
        self, endpoint: WebhookEndpoint, queue: DeliveryQueue, *, dead_letters: DeadLetterSink,
        signing_key: str | bytes | None, poll_interval_s: float = 0.25,
        max_age_s: float | None = None, lease_margin_s: float = 30.0,
    ) -> None:  # fmt: skip
        self.endpoint = endpoint
        self.queue = queue
        self.id = endpoint_id(endpoint)
        self.name = endpoint_label(endpoint)
        self._pump_failures = QuietFailures(log, f"webhook {self.name}")
        self.breaker = CircuitBreaker(endpoint.failure_threshold, endpoint.cooldown_s)
        self.budget = RetryBudget(endpoint.retries_per_minute)
        self.max_age_s = max_age_s if max_age_s is not None else retry_window_s(endpoint)
        self.failing = False  # the last outcome was a failure: retries spend the budget
        self._dead_letters = dead_letters
        self._signing_key = signing_key
        self._poll_s = poll_interval_s
        self._lease_s = endpoint.timeout_s + lease_margin_s
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
                if self.breaker.state != "closed":
                    await self._give_up_expired()
                await self._claim_and_start()
                timeout = self._poll_s
                if self.breaker.state == "open":
                    timeout = min(timeout, max(0.001, self.breaker.retry_after()))
                due = await self.queue.next_due(self.id)
                if due is not None:
                    timeout = min(timeout, max(0.001, due - time.time()))
            except Exception as exc:  # Redis hiccup: keep the loop, try again after a pause
                self._pump_failures.failed(exc)
                timeout = self._poll_s
            else:
                self._pump_failures.succeeded()
            if self._stopping:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _claim_and_start(self) -> None:
        """Claim as many deliveries as the breaker and the concurrency limit allow; each started
        attempt holds one breaker permit until it reports its outcome."""
        while not self._stopping:
            probing = self.breaker.state != "closed"
            slots = self.breaker.permits(self.endpoint.max_concurrency - len(self._inflight))
            now = time.time()
            if probing:  # half-open: the oldest pending notification is the probe
                ids = await self.queue.claim_oldest(self.id, now, slots, self._lease_s)
            else:
                ids = await self.queue.claim(self.id, now, slots, self._lease_s)
            for delivery_id in ids:
                if delivery_id in self._inflight:  # its attempt is just finishing: undo after
                    self._reclaimed.add(delivery_id)
                elif not self.breaker.try_acquire():  # the breaker changed since permits()
                    await self.queue.restore(self.id, delivery_id)
                else:
                    task = asyncio.create_task(self._attempt(delivery_id, probe=probing))
                    self._inflight[delivery_id] = task
            if slots == 0 or len(ids) < slots:
                return

    async def _give_up_expired(self) -> None:
        """Dead-letter waiting deliveries older than ``max_age_s`` without another attempt
        (only while the circuit is not closed: the endpoint is known to be down)."""
        now = time.time()
        limit = max(1, self.endpoint.max_concurrency) * 8
        ids = await self.queue.claim_oldest(
            self.id, now, limit, self._lease_s, created_before=now - self.max_age_s
        )
        for delivery_id in ids:
            record = await self.queue.load(delivery_id)
            if record is None or record.status != "pending":
                await self.queue.forget(self.id, delivery_id)
                continue
            reason = (
                f"webhook gave up after {record.attempts} attempt(s) in "
                f"{now - record.created_at:.0f}s (max age {self.max_age_s:g}s): "
                f"{record.last_error or 'circuit open, never attempted'}"
            )
            await self._finish_dead(record, record.attempts, reason, record.last_error)

    async def _attempt(self, delivery_id: str, *, probe: bool) -> None:
        reported = False
        try:
            reported = await self._attempt_once(delivery_id, probe=probe)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # left leased: due again when the lease ends
            self._pump_failures.failed(exc)
        finally:
            if not reported:
                self.breaker.release()
            await self._settle(delivery_id)

    async def _settle(self, delivery_id: str) -> None:
        """Leave the in-flight set right after the attempt's last write (no await in between),
        and undo a claim the pump made while the attempt was finishing: that claim leased the
        delivery, which would stall its retry for the whole lease."""
        self._inflight.pop(delivery_id, None)
        self._wake.set()
        if delivery_id in self._reclaimed:
            self._reclaimed.discard(delivery_id)
            await self.queue.restore(self.id, delivery_id)

    async def _attempt_once(self, delivery_id: str, *, probe: bool) -> bool:
        """One attempt of a claimed delivery; True when its outcome was reported to the
        breaker (False: it never reached the endpoint, the permit is to be given back)."""
        record = await self.queue.load(delivery_id)
        if record is None or record.status != "pending":
            await self.queue.forget(self.id, delivery_id)
            return False
        now = time.time()
        retry = record.attempts > 0
        if retry and self.failing and not probe and not self.budget.try_acquire():
            WEBHOOK_RETRIES_THROTTLED.labels(self.name).inc()
            await self.queue.reschedule(self.id, delivery_id, now + self.budget.wait_s())
            return False
        attempts = record.attempts + 1
        result = await self.post(record, attempts)
        if result.ok or (result.endpoint_answered and not result.retryable):
            self.failing = False
            if self.breaker.record_success():
                await self._recovered()
        else:
            self.failing = True
            self.breaker.record_failure()
        if result.ok:
            await self.queue.record_final(record, "delivered", attempts)
            WEBHOOK_DELIVERIES.labels(self.name, "delivered").inc()
            return True
        if result.retryable and attempts < self.endpoint.max_attempts:
            delay = full_jitter_backoff(
                attempts, self.endpoint.backoff_base_s, self.endpoint.backoff_max_s
            )
            if result.retry_after_s is not None:
                delay = max(delay, min(result.retry_after_s, self.endpoint.backoff_max_s))
            await self.queue.record_retry(record, attempts, time.time() + delay, result.error)
            WEBHOOK_DELIVERIES.labels(self.name, "failed").inc()
            return True
        reason = (
            f"webhook gave up after {attempts} attempt(s): {result.error}"
            if result.retryable
            else f"webhook refused (not retried): {result.error}"
        )
        await self._finish_dead(record, attempts, reason, result.error)
        return True

    async def _recovered(self) -> None:
        """A probe got through: the backlog is due now, oldest first."""
        released = await self.queue.release(self.id, time.time())
        log.info("webhook %s: circuit closed; %d waiting deliveries due now", self.name, released)
        self._wake.set()

    async def _finish_dead(
        self, record: DeliveryRecord, attempts: int, reason: str, error: str
    ) -> None:
        try:
            await self._dead_letters(reason, record.body, f"webhook:{self.name}", record.group_key)
        except Exception as exc:  # keep it pending rather than lose it; try again later
            log.warning("webhook %s: dead letter failed (%s); will retry", self.name, exc)
            at = time.time() + self.endpoint.backoff_max_s
            await self.queue.record_retry(record, max(0, attempts - 1), at, f"{error}; {exc}")
            return
        await self.queue.record_final(record, "dead", attempts, error)
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
            headers[SIGNATURE_HEADER] = sign(record.body, record.idempotency_key, self._signing_key)
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
