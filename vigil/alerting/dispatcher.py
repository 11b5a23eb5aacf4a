"""From accepted alerts to webhook deliveries: the :class:`AlertDispatcher`.

``submit`` is one Redis script (dedupe, alert log, group buffer); grouping, silences, inhibition
and the HTTP work happen in the dispatcher's own asyncio tasks, never on the caller's path. Alerts
reach it only through the alerts topic (:mod:`.consumer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.asyncio import Redis

from vigil.alerting.alert_log import AlertLog
from vigil.alerting.delivery import WebhookDelivery
from vigil.alerting.delivery_queue import DeliveryQueue
from vigil.alerting.grouping import AlertGroupBuffer
from vigil.alerting.payloads import render_body
from vigil.alerting.routing import Notification, route
from vigil.alerting.silences import SilenceStore
from vigil.connectors.producer import RecordProducer
from vigil.outage import QuietFailures
from vigil.records import Alert
from vigil.settings import VigilSettings

log = logging.getLogger(__name__)


class AlertDispatcher:
    """Accepts alerts (``submit``), groups and routes them, delivers them to every configured
    webhook (none configured: alerts are still logged). State is in Redis, so a new dispatcher
    resumes exactly where an old one stopped."""

    def __init__(
        self, settings: VigilSettings, redis: Redis, *, producer: RecordProducer | None = None
    ) -> None:
        self.settings = settings
        self.redis = redis
        self._flush_failures = QuietFailures(log, "alert grouping")
        config = settings.alerting
        self.log = AlertLog(redis, settings.app_id, maxlen=settings.stream.alert_stream_maxlen)
        self.buffer = AlertGroupBuffer(redis, settings.app_id, config, log=self.log)
        self.silences = SilenceStore(redis, settings.app_id)
        self.queue = DeliveryQueue(redis, settings.app_id, retention_s=config.retention_s)
        key = settings.webhook_signing_key
        self.endpoints = [
            WebhookDelivery(
                endpoint,
                self.queue,
                dead_letters=self._dead_letter,
                signing_key=key.get_secret_value() if key else None,
                poll_interval_s=config.poll_interval_s,
                max_age_s=config.max_delivery_age_s,
                lease_margin_s=config.lease_margin_s,
            )
            for endpoint in settings.webhooks
        ]
        self._producer = producer
        self._owns_producer = False
        self._producer_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    def endpoint(self, url: str) -> WebhookDelivery:
        return next(e for e in self.endpoints if e.endpoint.url == url)

    async def start(self) -> None:
        if self.endpoints and not self.settings.webhook_signing_key:
            log.warning("webhook_signing_key is not set: webhooks go out unsigned")
        self._stopping = False
        for notification in await self.buffer.outbox():  # taken but not routed before a crash
            await self._route(notification)
        for endpoint in self.endpoints:
            await endpoint.start()
        self._flusher = asyncio.create_task(self._flush_loop(), name="alert-group-flusher")

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking groups and claiming deliveries; attempts in flight finish first."""
        self._stopping = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher
            self._flusher = None
        for endpoint in self.endpoints:
            await endpoint.stop(grace_s)
        if self._owns_producer and self._producer is not None:
            await self._producer.__aexit__(None, None, None)
            self._producer = None
            self._owns_producer = False

    async def submit(self, alert: Alert) -> bool:
        """Accept an alert: append it to the alert log and queue it for its group, in one Redis
        script; False (and nothing written) if this alert id and status was accepted before."""
        added = await self.buffer.add(alert, time.time())
        if added:
            self._wake.set()
        return added

    async def flush_due(self) -> int:
        """Turn every due group into a notification and queue its deliveries; returns how many."""
        sent = 0
        for group in await self.buffer.due_groups(time.time()):
            notification = await self.buffer.take(group, time.time())
            if notification is not None:
                await self._route(notification)
                sent += 1
        return sent

    async def _flush_loop(self) -> None:
        poll = self.settings.alerting.poll_interval_s
        while not self._stopping:
            timeout = poll
            try:
                await self.flush_due()
                due = await self.buffer.next_due()
                if due is not None:
                    timeout = min(poll, max(0.001, due - time.time()))
            except Exception as exc:
                self._flush_failures.failed(exc)
            else:
                self._flush_failures.succeeded()
            if self._stopping:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _route(self, notification: Notification) -> None:
        """Apply silences and inhibition, then queue one delivery per interested endpoint."""
        now = time.time()
        alerts = notification.alerts
        decision = route(
            alerts,
            now=now,
            silences=await self.silences.active(now),
            firing=await self.buffer.firing(now),
            rules=self.settings.alerting.inhibit_rules,
            firing_suppressed=await self.buffer.firing_suppressed(
                [a.alert_id for a in alerts if a.status == "resolved"]
            ),
        )
        muted = [a.alert_id for a, _ in decision.suppressed if a.status == "firing"]
        if muted:
            await self.buffer.mark_firing_suppressed(muted)
        if decision.suppressed:
            log.info(
                "notification %s: %d of %d alert(s) not sent (silenced or inhibited)",
                notification.notification_id, len(decision.suppressed), len(alerts),
            )  # fmt: skip
        for alert, why in decision.suppressed:
            log.debug(
                "alert %s (%s, %s) not sent: %s", alert.alert_id, alert.key, alert.status, why
            )
        for endpoint in self.endpoints:
            wanted = [a for a in decision.send if endpoint.wants(a)]
            if wanted:
                body = render_body(endpoint.endpoint, notification, wanted)
                if await self.queue.enqueue(endpoint.id, notification, body, now):
                    endpoint.wake()
        await self.buffer.routed(notification.notification_id)

    async def _dead_letter(self, reason: str, body: bytes, source: str, key: str | None) -> None:
        async with self._producer_lock:
            if self._producer is None:
                producer = RecordProducer(self.settings)
                await producer.__aenter__()
                self._producer, self._owns_producer = producer, True
        assert self._producer is not None
        await self._producer.send_dead_letter(
            reason, body, topic=self.settings.topics.alerts, source=source, key=key
        )
        await self._producer.flush()
