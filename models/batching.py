"""Batched inference for many keys: one forward pass per batch, on a dedicated worker thread.

Stream agents ``await scheduler.submit(window)`` for their key. Requests queue up; a collector
task on the event loop takes a batch when it is full or when the oldest request has waited
``max_wait_ms``, runs ONE forward pass on the scheduler's own worker thread (the event loop never
runs torch), and resolves each caller's future with its own row — or with the exception, for
every caller of a batch that failed.

**Latency target.** A batch's run time grows with its size. :class:`BatchSizer` keeps an EWMA of
the run time per size bucket (powers of two up to ``max_size``) and caps the next batch at the
largest bucket whose run time fits ``latency_target_ms``. Unmeasured buckets are estimated by
scaling the nearest measured one linearly (safe upwards: real cost grows slower than linearly).
A partial batch is recorded in the bucket above it, scaled up linearly, which again errs on the
slow side; the first run of each exact size (kernel set-up for a new shape) is not recorded.
Every ``probe_every`` batches the cap is raised one bucket for a single batch, so a bucket
measured slow during a transient stall gets a chance to prove it fits again.

While a batch runs, new requests queue; when it returns they form the next batch straight away,
so under load batches grow to the cap by themselves, and under light load a request waits at
most ``max_wait_ms`` before it runs. ``submit_many`` is a batch its caller has already gathered
(the stream agent hands over every window of a Kafka batch at once): it does not wait for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from vigil.models.config import BatchConfig

log = logging.getLogger(__name__)


class BatchPredictor(Protocol):
    """Anything that turns ``[B, T, F]`` windows into ``[B, H, F]`` forecasts (InferenceEngine)."""

    def predict(self, windows: np.ndarray) -> np.ndarray: ...


class SchedulerStoppedError(RuntimeError):
    """The scheduler stopped (or was not started) before this request could run."""


@dataclass(frozen=True)
class BatchRecord:
    """One forward pass, as the stream turns it into metrics."""

    size: int
    run_seconds: float
    wait_seconds: float  # how long the oldest request of the batch queued before it ran
    queue_depth: int  # requests still queued when the batch was taken
    cap: int  # batch-size cap in force for this batch
    failed: bool


@dataclass(frozen=True)
class SchedulerStats:
    batches: int
    requests: int
    failed_batches: int
    queue_depth: int
    cap: int
    run_ms_by_bucket: dict[int, float]
    recent: list[BatchRecord] = field(default_factory=list)


class BatchSizer:
    """Latency-targeted batch cap from measured run times per size bucket (pure logic)."""

    def __init__(
        self,
        max_size: int,
        latency_target_s: float,
        *,
        smoothing: float = 0.3,
        probe_every: int = 100,
        warmup_runs: int = 1,
    ) -> None:
        if max_size < 1 or latency_target_s <= 0 or not 0 < smoothing <= 1:
            raise ValueError("max_size >= 1, latency_target_s > 0 and 0 < smoothing <= 1 needed")
        self.max_size = max_size
        self.latency_target_s = latency_target_s
        self.smoothing = smoothing
        self.probe_every = probe_every
        powers = [1 << k for k in range(max_size.bit_length()) if (1 << k) < max_size]
        self.buckets: list[int] = [*powers, max_size]
        self.warmup_runs = warmup_runs
        self._seconds: dict[int, float] = {}
        self._runs_by_size: dict[int, int] = {}
        self._batches = 0

    def bucket_for(self, size: int) -> int:
        """The smallest bucket that holds ``size`` requests."""
        return (
            next(b for b in self.buckets if b >= size) if size <= self.max_size else self.max_size
        )

    def record(self, size: int, seconds: float) -> None:
        """Fold one measured run into its bucket (a partial batch is scaled up linearly).

        The first ``warmup_runs`` runs of each exact size are ignored: oneDNN / cuDNN build
        their kernels for a new shape on first use, which says nothing about later runs.
        """
        if size < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        runs = self._runs_by_size.get(size, 0)
        self._runs_by_size[size] = runs + 1
        if runs < self.warmup_runs:
            return
        bucket = self.bucket_for(size)
        scaled = seconds * bucket / min(size, bucket)
        previous = self._seconds.get(bucket)
        self._seconds[bucket] = (
            scaled if previous is None else previous + self.smoothing * (scaled - previous)
        )

    def estimate(self, bucket: int) -> float | None:
        """Expected run time of a ``bucket``-sized batch; None before anything is measured."""
        if bucket in self._seconds:
            return self._seconds[bucket]
        below = [b for b in self._seconds if b < bucket]
        above = [b for b in self._seconds if b > bucket]
        if below:
            nearest = max(below)
        elif above:
            nearest = min(above)
        else:
            return None
        return self._seconds[nearest] * bucket / nearest

    def cap(self) -> int:
        """Largest bucket whose (estimated) run time fits the target; max_size until measured."""
        if not self._seconds:
            return self.max_size
        fitting = [b for b in self.buckets if (self.estimate(b) or 0.0) <= self.latency_target_s]
        return max(fitting, default=1)

    def next_cap(self) -> int:
        """The cap for the next batch: :meth:`cap`, or one bucket above it on a probe turn."""
        self._batches += 1
        cap = self.cap()
        if self.probe_every and self._batches % self.probe_every == 0 and cap < self.max_size:
            return self.buckets[self.buckets.index(cap) + 1]
        return cap

    def run_seconds_by_bucket(self) -> dict[int, float]:
        return dict(sorted(self._seconds.items()))


@dataclass
class _Request:
    window: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float  # loop time


class BatchScheduler:
    """Collects windows from many keys into batched forward passes on one worker thread."""

    def __init__(
        self,
        predictor: BatchPredictor,
        config: BatchConfig,
        *,
        window_shape: tuple[int, int] | None = None,
        on_batch: Callable[[BatchRecord], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        probe_every: int = 100,
        name: str = "default",
        history: int = 256,
    ) -> None:
        self.predictor = predictor
        self.config = config
        self.window_shape = window_shape
        self.on_batch = on_batch
        self.name = name
        self._clock = clock
        self._sizer = BatchSizer(
            config.max_size, config.latency_target_ms / 1000.0, probe_every=probe_every
        )
        self._pending: deque[_Request] = deque()
        self._in_flight: list[_Request] = []
        self._wake = asyncio.Event()
        self._wanted = 1  # queue length at which the collector wants waking
        self._gathered = False  # a submit_many is queued: run without waiting for more
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        self._recent: deque[BatchRecord] = deque(maxlen=history)
        self._batches = 0
        self._requests = 0
        self._failed = 0

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the worker thread and the collector task on the running loop."""
        if self._task is not None:
            return
        self._stopping = False
        # torch's intra-op thread count is per OS thread (OpenMP): a new thread would use every
        # core; carry over the count the process chose (`VIGIL_TORCH_THREADS`).
        self._executor = ThreadPoolExecutor(
            1,
            thread_name_prefix=f"vigil-inference-{self.name}",
            initializer=torch.set_num_threads,
            initargs=(torch.get_num_threads(),),
        )
        self._task = asyncio.get_running_loop().create_task(
            self._collect(), name=f"vigil-batch-{self.name}"
        )

    async def stop(self) -> None:
        """Let the running batch finish, fail every queued request, stop the worker thread."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fail_all(self._pending, "the batch scheduler stopped before this request ran")
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._stopping

    # ---- requests ------------------------------------------------------------------------
    async def submit(self, window: np.ndarray) -> np.ndarray:
        """Queue one normalised window ``[T, F]``; returns its forecast ``[H, F]``."""
        (future,) = self._enqueue([window])
        if len(self._pending) >= self._wanted:
            self._wake.set()
        return await future

    async def submit_many(self, windows: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Queue several windows ``[N, T, F]``; returns ``[N, H, F]`` in the same order.

        The caller has gathered them already, so they run without waiting ``max_wait_ms``."""
        futures = self._enqueue(windows)
        if not futures:
            raise ValueError("submit_many needs at least one window")
        self._gathered = True
        self._wake.set()
        return np.stack(await asyncio.gather(*futures))

    def _enqueue(
        self, windows: np.ndarray | Sequence[np.ndarray]
    ) -> list[asyncio.Future[np.ndarray]]:
        """Check every window first (all or nothing), then queue each with its own future."""
        if not self.running:
            raise SchedulerStoppedError("the batch scheduler is not running; call start() first")
        checked = [self._check(window) for window in windows]
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures: list[asyncio.Future[np.ndarray]] = []
        for array in checked:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._pending.append(_Request(array, future, now))
            futures.append(future)
        return futures

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def cap(self) -> int:
        """The batch-size cap the latency target currently allows."""
        return self._sizer.cap()

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            batches=self._batches,
            requests=self._requests,
            failed_batches=self._failed,
            queue_depth=len(self._pending),
            cap=self._sizer.cap(),
            run_ms_by_bucket={b: s * 1000 for b, s in self._sizer.run_seconds_by_bucket().items()},
            recent=list(self._recent),
        )

    def _check(self, window: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(window, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"a window must be [T, F], got shape {array.shape}")
        if self.window_shape is None:
            self.window_shape = (int(array.shape[0]), int(array.shape[1]))
        if array.shape != self.window_shape:
            raise ValueError(f"window shape {array.shape} != expected {self.window_shape}")
        if not np.isfinite(array).all():
            raise ValueError("window contains NaN or infinity; gap-fill before submitting")
        return array

    # ---- the collector -------------------------------------------------------------------
    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                if not self._pending:
                    await self._wait_for(1, None)
                    continue
                cap = self._sizer.next_cap()
                waiting = not self._gathered and self.config.max_wait_ms > 0
                if len(self._pending) < cap and waiting:
                    deadline = self._pending[0].enqueued + self.config.max_wait_ms / 1000.0
                    await self._wait_for(cap, deadline - loop.time())
                if self._stopping:
                    break
                batch = self._take(cap)
                if not self._pending:
                    self._gathered = False
                if batch:
                    await self._run(batch, cap, loop)
        finally:
            self._fail_all(self._in_flight, "the batch scheduler stopped while this request ran")
            self._in_flight = []

    async def _wait_for(self, count: int, timeout: float | None) -> None:
        """Sleep until ``count`` requests are queued, ``timeout`` passes, or stop is called."""
        if timeout is not None and timeout <= 0:
            return
        self._wanted = count
        self._wake.clear()
        if len(self._pending) >= count or self._stopping:
            return
        timer = None
        if timeout is not None:
            timer = asyncio.get_running_loop().call_later(timeout, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            if timer is not None:
                timer.cancel()
            self._wanted = 1

    def _take(self, cap: int) -> list[_Request]:
        batch: list[_Request] = []
        while self._pending and len(batch) < cap:
            request = self._pending.popleft()
            if not request.future.done():  # a caller that gave up costs no compute
                batch.append(request)
        return batch

    async def _run(self, batch: list[_Request], cap: int, loop: asyncio.AbstractEventLoop) -> None:
        self._in_flight = batch
        waited = loop.time() - batch[0].enqueued
        windows = np.stack([request.window for request in batch])
        seconds = math.nan
        try:
            output, seconds = await loop.run_in_executor(self._executor, self._timed, windows)
            if len(output) != len(batch):
                raise RuntimeError(f"predictor returned {len(output)} rows for {len(batch)}")
        except Exception as exc:
            self._failed += 1
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            failed = True
        else:
            self._sizer.record(len(batch), seconds)
            for row, request in enumerate(batch):
                if not request.future.done():
                    request.future.set_result(np.array(output[row], copy=True))
            failed = False
        self._in_flight = []
        self._batches += 1
        self._requests += len(batch)
        record = BatchRecord(len(batch), seconds, waited, len(self._pending), cap, failed)
        self._recent.append(record)
        if self.on_batch is not None:
            try:
                self.on_batch(record)
            except Exception:
                log.exception("on_batch callback failed (batch %s)", record)

    def _timed(self, windows: np.ndarray) -> tuple[np.ndarray, float]:
        """Runs on the worker thread: the forward pass and its run time."""
        start = self._clock()
        output = self.predictor.predict(windows)
        return np.asarray(output), self._clock() - start

    @staticmethod
    def _fail_all(requests: Sequence[_Request] | deque[_Request], reason: str) -> None:
        for request in requests:
            if not request.future.done():
                request.future.set_exception(SchedulerStoppedError(reason))
