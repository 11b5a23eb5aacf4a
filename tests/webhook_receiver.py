"""A real HTTP webhook receiver on 127.0.0.1 for tests: accepts, fails, hangs or "comes back".

It records every request (Idempotency-Key, body, signature check, when it started and ended) and
counts *accepted* deliveries per key, which is what "exactly once from the receiver's point of
view" means: a 2xx answered in time, once per Idempotency-Key. Behaviour can change mid-test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

from aiohttp import web

from vigil.alerting.signing import SIGNATURE_HEADER, signature_problem
from vigil.records import Alert, Provenance

Mode = Literal["accept", "fail", "hang", "reject"]


@dataclass
class ReceivedRequest:
    idempotency_key: str
    body: bytes
    headers: dict[str, str]
    started: float
    ended: float = 0.0
    status: int = 0  # 0 = never answered (hung until the client gave up)
    signature_problem: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """``mode``: accept (200), fail (500), hang (sleep ``hang_s`` then 200, by then the client has
    given up), reject (400). ``fail_first``/``hang_first``: that many requests fail/hang before
    the receiver "comes back" and accepts. ``delay_s`` slows every accepted answer."""

    mode: Mode = "accept"
    fail_first: int = 0
    hang_first: int = 0
    hang_s: float = 2.0
    delay_s: float = 0.0
    signing_key: str | None = None
    tolerance_s: float = 300.0
    requests: list[ReceivedRequest] = field(default_factory=list)
    accepted: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    _runner: web.AppRunner | None = None
    url: str = ""
    path: str = "/hook"

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}{self.path}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        record = ReceivedRequest(
            idempotency_key=request.headers.get("Idempotency-Key", ""),
            body=body,
            headers=dict(request.headers),
            started=time.monotonic(),
        )
        if self.signing_key is not None:
            record.signature_problem = signature_problem(
                body, record.idempotency_key, request.headers.get(SIGNATURE_HEADER),
                self.signing_key, tolerance_s=self.tolerance_s,
            )  # fmt: skip
        self.requests.append(record)
        number = len(self.requests)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.mode == "hang" or number <= self.hang_first:
                await asyncio.sleep(self.hang_s)
                return web.Response(status=200)  # too late: the client has given up
            if self.mode == "fail" or number <= self.hang_first + self.fail_first:
                record.status = 500
                return web.Response(status=500, text="receiver is down")
            if self.mode == "reject":
                record.status = 400
                return web.Response(status=400, text="bad payload")
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            record.status = 200
            self.accepted[record.idempotency_key] = self.accepted.get(record.idempotency_key, 0) + 1
            return web.Response(status=200, text="ok")
        finally:
            record.ended = time.monotonic()
            self.in_flight -= 1

    def accepted_bodies(self) -> list[Any]:
        return [r.json() for r in self.requests if r.status == 200]

    def accepted_alert_ids(self) -> list[str]:
        """Alert idempotency keys (``<alert_id>:<status>``) in accepted notifications."""
        return [a["idempotency_key"] for body in self.accepted_bodies() for a in body["alerts"]]


def make_alert(
    alert_id: str, key: str = "AAPL", *, status: str = "firing", severity: str = "critical",
    group: str = "stocks",
) -> Alert:  # fmt: skip
    """An alert as the stream would publish it."""
    now = time.time()
    return Alert(
        alert_id=alert_id,
        key=key,
        group=group,
        status=status,
        severity=severity,
        start=now - 5.0,
        end=now if status == "resolved" else None,
        score=0.995,
        recent_values=[101.0, 99.5, 140.2],
        forecast=[100.4],
        provenance=Provenance(
            topic="vigil.readings", partition=0, offset=42, model_version="v3", vigil_version="test"
        ),
    )


async def wait_until(
    condition: Callable[[], bool], timeout_s: float = 10.0, what: str = ""
) -> None:
    """Poll ``condition`` until true; fail the test with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or condition}")
        await asyncio.sleep(0.01)
