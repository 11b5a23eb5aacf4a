"""Infrastructure faults are not bad input: wait them out, say so once, never drop the batch.

When Redis or Kafka is away, the worker's batch path retries the operation that failed with
exponential back-off (jittered, capped) until it succeeds or the batch is abandoned (shutdown,
partitions revoked). Nothing is acked meanwhile, so Kafka keeps the offsets uncommitted and the
events wait there; Faust's bounded buffers stop fetching once the agent stops taking events.

Each service has one :class:`OutageWatch`: it logs one line when the service goes away and one
when it is back (not one traceback per attempt), exports ``vigil_outage{service}`` and tells
``/ready`` to answer 503 while the outage lasts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.exceptions as redis_errors
from aiokafka import errors as kafka_errors

log = logging.getLogger("vigil.outage")
_T = TypeVar("_T")

_REDIS_FAULTS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,  # a replica promoted mid-failover
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)
_KAFKA_FAULTS: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.RequestTimedOutError,
    kafka_errors.NotLeaderForPartitionError,
    kafka_errors.LeaderNotAvailableError,
    kafka_errors.NotEnoughReplicasError,
    kafka_errors.NotEnoughReplicasAfterAppendError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.NoBrokersAvailable,
    kafka_errors.UnknownTopicOrPartitionError,  # a topic being (re)created
)


def fault_service(exc: BaseException) -> str | None:
    """``"redis"`` or ``"kafka"`` if ``exc`` (or what caused it) is an infrastructure fault."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _REDIS_FAULTS):
            return "redis"
        if isinstance(current, _KAFKA_FAULTS):
            return "kafka"
        if isinstance(current, redis_errors.ResponseError) and str(current).startswith(
            ("OOM", "MISCONF", "LOADING", "MASTERDOWN", "NOREPLICAS")
        ):
            return "redis"  # Redis is up but cannot take writes now: also waited out
        if isinstance(current, ConnectionError | TimeoutError):  # OSError family, both clients
            return "kafka" if "kafka" in type(current).__module__ else "redis"
        current = current.__cause__ or current.__context__
    return None


class Abandoned(Exception):
    """The batch was given up (shutdown or revocation); its events stay unacked in Kafka."""


class OutageWatch:
    """One service's outage state, and the retry loop that waits it out."""

    def __init__(
        self,
        service: str,
        *,
        on_change: Callable[[str, bool], None] | None = None,
        first_delay_s: float = 0.1,
        max_delay_s: float = 5.0,
    ) -> None:
        self.service = service
        self.on_change = on_change
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.down_since: float | None = None
        self.outages = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.outages += 1
            log.warning(
                "%s is unreachable (%s: %s); pausing and retrying until it is back",
                self.service,
                type(exc).__name__,
                str(exc)[:200],
            )
            if self.on_change is not None:
                self.on_change(self.service, True)

    def recovered(self) -> None:
        if self.down_since is not None:
            log.warning(
                "%s is back after %.1f s; resuming",
                self.service,
                time.monotonic() - self.down_since,
            )
            self.down_since = None
            if self.on_change is not None:
                self.on_change(self.service, False)


class FaultTolerance:
    """The worker's outage watches, one per service, and :meth:`retry` over them."""

    def __init__(self, on_change: Callable[[str, bool], None] | None = None) -> None:
        self.watches = {name: OutageWatch(name, on_change=on_change) for name in ("redis", "kafka")}
        self.abandon = asyncio.Event()  # set on shutdown: retries give up, nothing is acked

    @property
    def down(self) -> list[str]:
        return [name for name, watch in self.watches.items() if watch.down]

    async def retry(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``operation`` until it succeeds; infrastructure faults are waited out, anything
        else propagates at once."""
        delay: float | None = None
        failed: OutageWatch | None = None
        while True:
            try:
                result = await operation()
            except Exception as exc:
                service = fault_service(exc)
                if service is None:
                    raise
                failed = self.watches[service]
                delay = await self.back_off(service, exc, delay)
                continue
            if failed is not None:
                failed.recovered()
            return result

    async def back_off(self, service: str, exc: BaseException, delay: float | None) -> float:
        """Note ``service``'s outage, wait the next delay (doubling from the first, capped,
        jittered) and return it: pass it back in for the next failure of the same wait."""
        watch = self.watches[service]
        watch.failed(exc)
        delay = watch.first_delay_s if delay is None else min(delay * 2, watch.max_delay_s)
        await self.pause(delay * random.uniform(0.5, 1.0))
        return delay

    def succeeded(self, service: str) -> None:
        self.watches[service].recovered()

    async def pause(self, seconds: float) -> None:
        """Sleep between retries; raises :class:`Abandoned` once the batch is given up."""
        if self.abandon.is_set():
            raise Abandoned("shutting down")
        try:
            await asyncio.wait_for(self.abandon.wait(), seconds)
        except TimeoutError:
            return
        raise Abandoned("shutting down")


class QuietFailures:
    """A background loop's log: an infrastructure fault once when it starts and once when it
    ends (no traceback per retry), anything else with its traceback every time."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.since: float | None = None

    def failed(self, exc: BaseException) -> None:
        service = fault_service(exc)
        if service is None:
            self.logger.error("%s failed; retrying", self.what, exc_info=exc)
        elif self.since is None:
            self.since = time.monotonic()
            self.logger.warning("%s: %s is unreachable (%s: %s); retrying until it is back",
                                self.what, service, type(exc).__name__, str(exc)[:200])  # fmt: skip

    def succeeded(self) -> None:
        if self.since is not None:
            self.logger.warning(
                "%s: resumed after %.1f s", self.what, time.monotonic() - self.since
            )
            self.since = None
