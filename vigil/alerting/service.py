"""Alerting as a Faust service: the alerts consumer started and stopped with a worker.

The worker registers it with ``app.service(alerting_service(settings))`` when
``alerting.in_worker`` is true (the default). It has its own Kafka consumer (group
``{app_id}-alerting``) and its own Redis client, so it shares nothing with the stream's batch
path but the event loop: the stream only publishes alerts to the topic.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from vigil.alerting.consumer import AlertsConsumer
from vigil.settings import VigilSettings

log = logging.getLogger(__name__)


class AlertingService(faust.Service):
    """Runs an :class:`AlertsConsumer` for as long as the service runs."""

    def __init__(self, settings: VigilSettings, **kwargs: Any) -> None:
        self.settings = settings
        self.consumer: AlertsConsumer | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        self._stop.clear()
        consumer = AlertsConsumer(self.settings)
        try:
            await consumer.start()
        except BaseException:
            await consumer.close()
            raise
        self.consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="vigil-alerting")

    async def _run(self, consumer: AlertsConsumer) -> None:
        while not self._stop.is_set():
            try:
                await consumer.run(self._stop)
            except asyncio.CancelledError:
                raise
            except Exception:  # the stream keeps running; its alerts wait in the topic
                log.exception("alerting: the alerts consumer failed; resuming in 1 s")
                await asyncio.sleep(1.0)  # what it accepted is in Redis; re-reads are deduplicated

    async def on_stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.consumer is not None:
            await self.consumer.close()
            self.consumer = None


def alerting_service(settings: VigilSettings) -> AlertingService:
    """The service a worker registers: ``app.service(alerting_service(settings))``."""
    return AlertingService(settings)
