"""End-to-end pipeline benchmark: throughput, latency and overload of a real ``vigil worker``.

Everything runs in ONE run against the same broker and Redis, each worker in its own process:

1. **Max throughput.** A backlog (``keys`` x ``events_per_key`` noisy readings) is produced into
   a fresh readings topic first; then a bare Faust passthrough (:mod:`vigil.bench.passthrough`)
   and a
   real ``vigil worker`` with the default model group drain it one after the other. A rate is
   output records over the span between the first and the last output's CreateTime (stamped by
   the worker's producer), so start-up is not counted. Vigil's last states are checked in Redis.
2. **Latency at half load.** Readings offered at 0.5 x Vigil's rate, timestamped when built;
   event-to-prediction latency = the prediction's CreateTime - the reading's timestamp (one
   clock: both on this machine).
3. **Overload.** Readings offered at 1.5x and 2x Vigil's rate. In-worker latency comes from the
   worker's ``vigil_in_worker_seconds`` histogram (two scrapes, quantiles from the buckets);
   end-to-end latency grows because the excess waits in Kafka; pauses, backlog at the end, the
   time to drain it, and a check that every reading got its prediction.

Nothing is asserted: figures are printed next to their targets.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from aiokafka.structs import ConsumerRecord

from vigil.bench.kafka_traffic import (
    Offsets,
    ReadingProducer,
    ReadingSeries,
    TopicReader,
    committed_lag,
    delete_topics,
)
from vigil.bench.prometheus_histogram import BucketCounts, histogram, sample_total
from vigil.bench.worker_subprocess import VIGIL_WORKER, WorkerSubprocess
from vigil.connectors.producer import kafka_client_options
from vigil.settings import ModelConfig, ModelGroup, TopicNames, VigilSettings
from vigil.topics import ensure_topics

RATIO_TARGET = 0.30  # Vigil events/s ÷ bare passthrough events/s
LATENCY_P99_TARGET_MS = 100.0  # event to prediction at half the max rate
IN_WORKER = "vigil_in_worker_seconds"
STAGE = "vigil_handle_stage_seconds"
STAGES = ("decode", "load_state", "process", "encode", "deliver", "save_state", "handle")
BATCH_EVENTS = "vigil_handled_batch_events"
PASSTHROUGH = ("-m", "vigil.bench.passthrough")

Progress = Callable[[str], None]


def small_model_group() -> ModelGroup:
    return ModelGroup(name="small", model=ModelConfig(hidden_size=16, num_layers=1, window=16))


@dataclass
class PipelinePlan:
    """How much traffic each phase offers (the defaults take about 3 minutes on 2 cores)."""

    keys: int = 32
    events_per_key: int = 600
    latency_seconds: float = 20.0
    overload_seconds: float = 12.0
    overload_factors: tuple[float, ...] = (1.5, 2.0)
    group: ModelGroup = field(default_factory=lambda: ModelGroup(name="default"))
    small_group: ModelGroup | None = None  # also measure max throughput with this group
    workers: int = 1  # > 1: also drain the backlog with this many workers side by side
    backlog_interval_s: float = 0.05
    timeout_s: float = 180.0
    log_dir: Path = Path(".vigil/bench")


@dataclass
class Throughput:
    name: str
    events_per_s: float
    records: int  # outputs counted between the first and the last one
    seconds: float  # first to last output's CreateTime
    startup_s: float  # worker process start to its first output
    lost: int = 0
    batch_events_mean: float | None = None  # a Vigil worker's batches (from its /metrics)
    stage_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class LatencyPhase:
    offered_per_s: float
    achieved_per_s: float
    seconds: float
    events: int
    e2e_p50_ms: float
    e2e_p99_ms: float
    e2e_max_ms: float
    in_worker_p50_ms: float
    in_worker_p99_ms: float
    backlog_at_end: int  # produced but not yet predicted when the load stopped: kept up?
    lost: int
    duplicates: int
    batch_events_mean: float = 0.0  # events per batch the agent handled
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean per batch, by stage


@dataclass
class OverloadPhase:
    factor: float
    offered_per_s: float
    achieved_per_s: float
    seconds: float
    produced: int
    in_worker_p50_ms: float  # events handled while the load was offered
    in_worker_p99_ms: float
    in_worker_within_2x_target: float  # share of those at most 2 x latency_target_ms
    in_worker_p99_incl_drain_ms: float  # every event of the phase, drain included
    e2e_p50_ms: float
    e2e_p99_ms: float
    pauses: int
    paused_partitions_max: int
    paused_share: float  # share of 1-second samples with at least one partition paused
    backlog_at_end: int  # produced but not yet predicted when the load stopped
    committed_lag_at_end: int | None  # the consumer group's view (commits trail by ~1 s)
    drain_seconds: float | None
    lost: int
    duplicates: int
    batch_events_mean: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class PipelineBenchResult:
    run: str  # names the bench topics, app ids and worker logs of this run
    model: dict[str, Any]
    batch: dict[str, Any]
    partitions: int
    keys: int
    events_per_key: int
    cpus: int
    load_average_start: float
    training: bool = True
    load_average_end: float = 0.0
    passthrough: Throughput | None = None
    vigil: Throughput | None = None
    small_model: Throughput | None = None
    small_model_config: dict[str, Any] | None = None
    scale_out: Throughput | None = None  # ``workers`` workers draining one backlog together
    workers: int = 1
    redis_state_ok: bool = False
    redis_state_detail: str = ""
    latency: LatencyPhase | None = None
    overload: list[OverloadPhase] = field(default_factory=list)
    dead_letters: int = 0
    seconds_total: float = 0.0

    @property
    def ratio(self) -> float:
        if not self.vigil or not self.passthrough or not self.passthrough.events_per_s:
            return 0.0
        return self.vigil.events_per_s / self.passthrough.events_per_s

    @property
    def lost_events(self) -> int:
        phases = [self.vigil, self.latency, *self.overload]
        return sum(p.lost for p in phases if p is not None)

    def targets(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {
            "vigil_vs_passthrough": {
                "value": self.ratio,
                "target": RATIO_TARGET,
                "met": self.ratio >= RATIO_TARGET,
            }
        }
        if self.latency is not None:
            p99 = self.latency.e2e_p99_ms
            out["p99_latency_ms_at_half_max"] = {
                "value": p99,
                "target": LATENCY_P99_TARGET_MS,
                "met": p99 < LATENCY_P99_TARGET_MS,
            }
        out["no_lost_events"] = {
            "value": self.lost_events,
            "target": 0,
            "met": not self.lost_events,
        }
        return out

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["lost_events"] = self.lost_events
        data["targets"] = self.targets()
        return data


# ---- the run ----------------------------------------------------------------------------------
class PipelineBench:
    def __init__(self, settings: VigilSettings, plan: PipelinePlan, progress: Progress) -> None:
        self.plan = plan
        self.say = progress
        run = uuid.uuid4().hex[:8]
        self.run = run
        partitions = settings.topics.partitions
        topics = TopicNames.named(f"bench-{run}", partitions)
        self.settings = settings.model_copy(
            update={"app_id": f"vigil-bench-{run}", "topics": topics, "groups": [plan.group]}
        )
        self.passthrough_settings = self.settings.model_copy(
            update={
                "app_id": f"vigil-bench-{run}-passthrough",
                "topics": topics.model_copy(update={"predictions": f"bench-{run}.passthrough"}),
            }
        )
        self.small_settings: VigilSettings | None = None
        if plan.small_group is not None:
            self.small_settings = self.settings.model_copy(
                update={
                    "app_id": f"vigil-bench-{run}-small",
                    "groups": [plan.small_group],
                    "topics": topics.model_copy(
                        update={
                            "readings": f"bench-{run}.small-readings",
                            "predictions": f"bench-{run}.small-predictions",
                            "model_versions": f"bench-{run}.small-model-versions",
                        }
                    ),
                }
            )
        self.scale_settings: VigilSettings | None = None
        if plan.workers > 1:
            self.scale_settings = self.settings.model_copy(
                update={
                    "app_id": f"vigil-bench-{run}-scale",
                    "topics": topics.model_copy(
                        update={
                            "readings": f"bench-{run}.scale-readings",
                            "predictions": f"bench-{run}.scale-predictions",
                            "model_versions": f"bench-{run}.scale-model-versions",
                        }
                    ),
                }
            )
        self.series = ReadingSeries(plan.keys, partitions, seed=7)
        self.workers: list[WorkerSubprocess] = []
        self.result = PipelineBenchResult(
            run=run,
            model=plan.group.model.model_dump(),
            batch=self.settings.batch.model_dump(),
            partitions=partitions,
            keys=plan.keys,
            events_per_key=plan.events_per_key,
            cpus=os.cpu_count() or 1,
            load_average_start=os.getloadavg()[0],
            training=plan.group.training.enabled,
        )

    @property
    def _all_settings(self) -> list[VigilSettings | None]:
        return [self.settings, self.passthrough_settings, self.small_settings, self.scale_settings]

    @property
    def topic_names(self) -> list[str]:
        names: list[str] = []
        for s in self._all_settings:
            if s is not None:
                t = s.topics
                names += [t.readings, t.predictions, t.alerts, t.dead_letters]
                names += [t.model_versions, t.drift]
        return list(dict.fromkeys(names))

    async def run_all(self) -> PipelineBenchResult:
        started = time.monotonic()
        bootstrap = self.settings.bootstrap
        options = kafka_client_options(self.settings)  # SASL/TLS of a secured cluster
        await ensure_topics(self.settings, self.topic_names)
        try:
            async with TopicReader(bootstrap, self.settings.topics.partitions, options) as reader:
                self.reader = reader
                async with ReadingProducer(
                    bootstrap, self.settings.topics.readings, self.series, options
                ) as producer:
                    self.producer = producer
                    await self._throughput_phases()
                    await self._latency_phase()
                    for factor in self.plan.overload_factors:
                        await self._overload_phase(factor)
                self.result.dead_letters = await reader.count(self.settings.topics.dead_letters)
                self._stop_workers()
                if self.small_settings is not None:
                    await self._small_model_phase(self.small_settings)
                if self.scale_settings is not None:
                    await self._scale_out_phase(self.scale_settings)
        finally:
            self._stop_workers()
            await self._clean_up()
        self.result.load_average_end = os.getloadavg()[0]
        self.result.seconds_total = time.monotonic() - started
        return self.result

    # ---- phase 1 ------------------------------------------------------------------------------
    async def _throughput_phases(self) -> None:
        plan = self.plan
        total = plan.keys * plan.events_per_key
        self.say(f"producing a backlog of {total:,} readings ({plan.keys} keys)")
        await self.producer.backlog(
            plan.events_per_key,
            interval_s=plan.backlog_interval_s,
            end_ts=time.time() - 1.0,
        )
        self.say("bare Faust passthrough draining the backlog")
        with self._worker(self.passthrough_settings, "passthrough", PASSTHROUGH) as worker:
            self.result.passthrough = await self._drain_rate(
                worker.check_alive,
                self.passthrough_settings,
                "faust passthrough",
                total,
                lambda _: 0,
            )
        self.say(f"vigil worker ({_describe(plan.group)}) draining the backlog")
        vigil = self._start(self.settings, "vigil", VIGIL_WORKER)
        self.vigil_worker = vigil
        expected_per_key = plan.events_per_key - plan.group.model.window + 1
        self.result.vigil = await self._drain_rate(
            vigil.check_alive,
            self.settings,
            "vigil",
            plan.keys * expected_per_key,
            lambda records: _lost_per_key(records, self.series.keys, expected_per_key),
        )
        await asyncio.to_thread(vigil.wait_ready)
        drained = await self._snapshot()  # the worker's metrics started at zero with it
        self.result.vigil.batch_events_mean = drained.batch_events.mean
        self.result.vigil.stage_ms = _stage_means_ms(drained)
        await self._check_redis_state()

    async def _backlog_on(self, settings: VigilSettings) -> ReadingSeries:
        """The same backlog as phase 1, on ``settings``' own readings topic (the main one has
        the paced phases)."""
        series = ReadingSeries(self.plan.keys, settings.topics.partitions, seed=7)
        async with ReadingProducer(
            settings.bootstrap, settings.topics.readings, series, kafka_client_options(settings)
        ) as p:
            await p.backlog(
                self.plan.events_per_key,
                interval_s=self.plan.backlog_interval_s,
                end_ts=time.time() - 1.0,
            )
        return series

    async def _small_model_phase(self, settings: VigilSettings) -> None:
        group = settings.groups[0]
        series = await self._backlog_on(settings)
        self.say(f"vigil worker with a small model ({_describe(group)}) draining the backlog")
        expected_per_key = self.plan.events_per_key - group.model.window + 1
        with self._worker(settings, "vigil-small", VIGIL_WORKER) as worker:
            self.result.small_model = await self._drain_rate(
                worker.check_alive,
                settings,
                "vigil, small model",
                self.plan.keys * expected_per_key,
                lambda records: _lost_per_key(records, series.keys, expected_per_key),
            )
        self.result.small_model_config = group.model.model_dump()

    async def _scale_out_phase(self, settings: VigilSettings) -> None:
        """N workers in one consumer group share the partitions; the backlog is produced once
        all of them are ready, so no rebalance falls inside the measured span."""
        n = self.plan.workers
        self.say(f"{n} vigil workers side by side")
        workers = [self._start(settings, f"vigil-scale-{i}", VIGIL_WORKER) for i in range(n)]
        for worker in workers:
            await asyncio.to_thread(worker.wait_ready)
        series = await self._backlog_on(settings)
        expected_per_key = self.plan.events_per_key - settings.groups[0].model.window + 1

        def check() -> None:
            for worker in workers:
                worker.check_alive()

        self.result.scale_out = await self._drain_rate(
            check,
            settings,
            f"vigil, {n} workers",
            self.plan.keys * expected_per_key,
            lambda records: _lost_per_key(records, series.keys, expected_per_key),
        )
        self.result.workers = n
        self._stop_workers()

    async def _drain_rate(
        self,
        check: Callable[[], None],  # raises if a worker died
        settings: VigilSettings,
        name: str,
        expected: int,
        lost: Callable[[list[ConsumerRecord[bytes, bytes]]], int],
    ) -> Throughput:
        out = settings.topics.predictions
        start = time.time()
        waited = await self.reader.wait_for_count(out, expected, self.plan.timeout_s, check)
        if waited is None:
            raise TimeoutError(
                f"{name}: fewer than {expected} outputs after {self.plan.timeout_s}s"
            )
        records = await self.reader.read(out)
        stamps = np.array([r.timestamp for r in records], dtype=np.float64) / 1000
        span = max(float(stamps.max() - stamps.min()), 0.001)  # CreateTime has 1 ms steps
        rate = (len(records) - 1) / span
        self.say(f"{name}: {rate:,.0f} events/s over {span:.1f}s")
        return Throughput(
            name, rate, len(records), span, float(stamps.min()) - start, lost(records)
        )

    async def _check_redis_state(self) -> None:
        """The last reading of a few keys is in their Redis state and latest prediction."""
        client = aioredis.Redis.from_url(self.settings.redis)
        prefix = f"vigil:{self.settings.app_id}"
        group = self.plan.group.name
        keys = [k.decode() for k in self.series.keys[:4]]
        detail = ""
        try:
            for _ in range(60):
                problems = []
                for index, key in enumerate(keys):
                    raw = await client.get(f"{prefix}:state:{group}:{key}")
                    events = json.loads(raw)["events"] if raw else None
                    latest = await client.hget(f"{prefix}:predictions", key)
                    ts = json.loads(latest)["timestamp"] if latest else None
                    if events != self.plan.events_per_key or ts != self.series.last_ts[index]:
                        problems.append(f"{key}: events={events} last prediction ts={ts}")
                detail = "; ".join(problems)
                if not problems:
                    break
                await asyncio.sleep(0.25)
        finally:
            await client.aclose()
        self.result.redis_state_ok = not detail
        self.result.redis_state_detail = detail or (
            f"{len(keys)} keys: {self.plan.events_per_key} events in state, latest prediction "
            "is the last reading"
        )

    # ---- phase 2 ------------------------------------------------------------------------------
    async def _latency_phase(self) -> None:
        assert self.result.vigil is not None
        rate = 0.5 * self.result.vigil.events_per_s
        seconds = self.plan.latency_seconds
        self.say(f"latency: offering {rate:,.0f} readings/s for {seconds:.0f}s")
        before = await self._snapshot()
        run = await self.producer.paced(rate, seconds)
        at_end = await self._snapshot()
        drain = await self._wait_for_predictions(before, run.sent)
        after = await self._snapshot()
        e2e, lost, dupes = await self._outputs_since(before, after)
        in_worker = after.in_worker.minus(before.in_worker)
        self.result.latency = LatencyPhase(
            offered_per_s=rate,
            achieved_per_s=run.achieved_per_s,
            seconds=run.seconds,
            events=run.sent,
            e2e_p50_ms=_percentile_ms(e2e, 50),
            e2e_p99_ms=_percentile_ms(e2e, 99),
            e2e_max_ms=_percentile_ms(e2e, 100),
            in_worker_p50_ms=in_worker.quantile(0.5) * 1000,
            in_worker_p99_ms=in_worker.quantile(0.99) * 1000,
            backlog_at_end=_backlog(before, at_end),
            lost=lost,
            duplicates=dupes,
            batch_events_mean=at_end.batch_events.minus(before.batch_events).mean,
            stage_ms=_stage_means_ms(at_end, before),
        )
        if drain is None:
            self.say("latency: not every reading got its prediction in time")

    # ---- phase 3 ------------------------------------------------------------------------------
    async def _overload_phase(self, factor: float) -> None:
        assert self.result.vigil is not None
        rate = factor * self.result.vigil.events_per_s
        seconds = self.plan.overload_seconds
        self.say(f"overload {factor}x: offering {rate:,.0f} readings/s for {seconds:.0f}s")
        await asyncio.sleep(1.0)
        before = await self._snapshot()
        samples: list[float] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(self._sample_paused(samples, stop))
        try:
            run = await self.producer.paced(rate, seconds)
            at_end = await self._snapshot()
        finally:
            stop.set()
            await sampler
        backlog = _backlog(before, at_end)
        lag = await committed_lag(
            self.settings.bootstrap,
            self.settings.app_id,
            self.settings.topics.readings,
            at_end.readings,
            kafka_client_options(self.settings),
        )
        self.say(f"overload {factor}x: load stopped with {backlog:,} events waiting")
        drain = await self._wait_for_predictions(before, run.sent)
        after = await self._snapshot()
        e2e, lost, dupes = await self._outputs_since(before, after)
        loaded = at_end.in_worker.minus(before.in_worker)
        whole = after.in_worker.minus(before.in_worker)
        target_s = self.settings.batch.latency_target_ms / 1000
        self.result.overload.append(
            OverloadPhase(
                factor=factor,
                offered_per_s=rate,
                achieved_per_s=run.achieved_per_s,
                seconds=run.seconds,
                produced=run.sent,
                in_worker_p50_ms=loaded.quantile(0.5) * 1000,
                in_worker_p99_ms=loaded.quantile(0.99) * 1000,
                in_worker_within_2x_target=loaded.fraction_at_most(2 * target_s),
                in_worker_p99_incl_drain_ms=whole.quantile(0.99) * 1000,
                e2e_p50_ms=_percentile_ms(e2e, 50),
                e2e_p99_ms=_percentile_ms(e2e, 99),
                pauses=int(after.pauses - before.pauses),
                paused_partitions_max=int(max(samples, default=0)),
                paused_share=sum(1 for s in samples if s > 0) / len(samples) if samples else 0.0,
                backlog_at_end=backlog,
                committed_lag_at_end=lag,
                drain_seconds=drain,
                lost=lost,
                duplicates=dupes,
                batch_events_mean=at_end.batch_events.minus(before.batch_events).mean,
                stage_ms=_stage_means_ms(at_end, before),
            )
        )

    async def _sample_paused(self, samples: list[float], stop: asyncio.Event) -> None:
        while not stop.is_set():
            text = await asyncio.to_thread(self.vigil_worker.metrics)
            samples.append(sample_total(text, "vigil_intake_held"))
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    # ---- shared steps -------------------------------------------------------------------------
    async def _snapshot(self) -> _Snapshot:
        topics = self.settings.topics
        text = await asyncio.to_thread(self.vigil_worker.metrics)
        return _Snapshot(
            readings=await self.reader.end_offsets(topics.readings),
            predictions=await self.reader.end_offsets(topics.predictions),
            in_worker=histogram(text, IN_WORKER),
            pauses=sample_total(text, "vigil_intake_holds_total")
            + sample_total(text, "vigil_buffer_full_total"),
            batch_events=histogram(text, BATCH_EVENTS),
            stages={name: histogram(text, STAGE, stage=name) for name in STAGES},
        )

    async def _wait_for_predictions(self, before: _Snapshot, produced: int) -> float | None:
        """Seconds until every reading produced since ``before`` has a prediction."""
        wanted = sum(before.predictions.values()) + produced
        return await self.reader.wait_for_count(
            self.settings.topics.predictions,
            wanted,
            self.plan.timeout_s,
            self.vigil_worker.check_alive,
        )

    async def _outputs_since(
        self, before: _Snapshot, after: _Snapshot
    ) -> tuple[np.ndarray, int, int]:
        """End-to-end latencies (s) of the predictions between two snapshots, and how many
        readings between them have no prediction (lost) or more than one (duplicates)."""
        records = await self.reader.read(
            self.settings.topics.predictions, before.predictions, after.predictions
        )
        latencies = np.empty(len(records))
        covered: Counter[tuple[int, int]] = Counter()
        for i, record in enumerate(records):
            prediction = json.loads(record.value)
            latencies[i] = record.timestamp / 1000 - prediction["timestamp"]
            source = prediction["provenance"]
            covered[(source["partition"], source["offset"])] += 1
        lost = 0
        for partition, end in after.readings.items():
            for offset in range(before.readings.get(partition, 0), end):
                if (partition, offset) not in covered:
                    lost += 1
        return latencies, lost, sum(n - 1 for n in covered.values())

    def _start(self, settings: VigilSettings, name: str, args: tuple[str, ...]) -> WorkerSubprocess:
        log_path = self.plan.log_dir / f"{self.run}-{name}.log"
        worker = WorkerSubprocess(settings, log_path, args).start()
        self.workers.append(worker)
        return worker

    @contextmanager
    def _worker(
        self, settings: VigilSettings, name: str, args: tuple[str, ...]
    ) -> Iterator[WorkerSubprocess]:
        worker = self._start(settings, name, args)
        try:
            yield worker
        finally:
            worker.stop()

    def _stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    async def _clean_up(self) -> None:
        """Delete the bench topics and every Redis key of the bench's app ids."""
        try:
            await delete_topics(
                self.settings.bootstrap, self.topic_names, kafka_client_options(self.settings)
            )
        except Exception as exc:  # a failed clean-up must not hide the figures
            self.say(f"could not delete bench topics: {exc}")
        client = aioredis.Redis.from_url(self.settings.redis)
        try:
            for s in self._all_settings:
                if s is not None:
                    doomed = [k async for k in client.scan_iter(f"vigil:{s.app_id}:*", count=500)]
                    if doomed:
                        await client.delete(*doomed)
        finally:
            await client.aclose()


@dataclass
class _Snapshot:
    readings: Offsets
    predictions: Offsets
    in_worker: BucketCounts
    pauses: float
    batch_events: BucketCounts
    stages: dict[str, BucketCounts]


def _stage_means_ms(after: _Snapshot, before: _Snapshot | None = None) -> dict[str, float]:
    """Mean milliseconds per batch in each stage of the agent between two scrapes (or since
    the worker started)."""
    means = {}
    for name in STAGES:
        counts = after.stages[name]
        if before is not None:
            counts = counts.minus(before.stages[name])
        means[name] = counts.mean * 1000
    return means


def _backlog(before: _Snapshot, at_end: _Snapshot) -> int:
    """Readings produced between two snapshots that had no prediction yet at the second."""
    produced = sum(at_end.readings.values()) - sum(before.readings.values())
    predicted = sum(at_end.predictions.values()) - sum(before.predictions.values())
    return produced - predicted


def _describe(group: ModelGroup) -> str:
    m = group.model
    return f"{m.cell} hidden {m.hidden_size} x {m.num_layers}, window {m.window}"


def _lost_per_key(
    records: list[ConsumerRecord[bytes, bytes]], keys: list[bytes], expected_per_key: int
) -> int:
    """Predictions missing from the backlog phase (the first window-1 events only warm up)."""
    per_key = Counter(r.key for r in records)
    return sum(max(0, expected_per_key - per_key.get(key, 0)) for key in keys)


def _percentile_ms(seconds: np.ndarray, q: float) -> float:
    return float(np.percentile(seconds, q) * 1000) if len(seconds) else float("nan")


def run_pipeline_bench(
    settings: VigilSettings, plan: PipelinePlan | None = None, progress: Progress = lambda _: None
) -> PipelineBenchResult:
    """Run every phase (blocking; about 3 minutes with the default plan)."""
    bench = PipelineBench(settings, plan or PipelinePlan(), progress)
    return asyncio.run(bench.run_all())


# ---- the report ---------------------------------------------------------------------------------
def print_report(result: PipelineBenchResult) -> None:
    """Readable tables: throughput, then one column per offered load, then the targets."""
    from rich.console import Console
    from rich.table import Table

    from vigil.bench.target_table import target_table

    console = Console(width=max(100, Console().width))
    m, b = result.model, result.batch
    title = (
        f"{m['cell']} hidden {m['hidden_size']} x {m['num_layers']}, window {m['window']}, "
        f"training {'on' if result.training else 'off'}; {result.keys} keys, "
        f"{result.partitions} partitions; batch ≤ {b['max_size']}, wait {b['max_wait_ms']:g} ms, "
        f"target {b['latency_target_ms']:g} ms, queue ≤ {b['max_queue']}"
    )
    rates = Table(title=f"Max throughput, one worker — {title}")
    for column in ("worker", "events/s", "outputs", "span", "start-up", "lost"):
        rates.add_column(column, justify="left" if column == "worker" else "right")
    for t in (result.passthrough, result.vigil, result.small_model, result.scale_out):
        if t is not None:
            rates.add_row(
                t.name,
                f"{t.events_per_s:,.0f}",
                f"{t.records:,}",
                f"{t.seconds:.1f} s",
                f"{t.startup_s:.1f} s",
                str(t.lost),
            )
    console.print(rates)
    drained = result.vigil
    if drained is not None and drained.batch_events_mean is not None:
        stages = ", ".join(f"{name} {ms:.1f} ms" for name, ms in drained.stage_ms.items())
        console.print(
            f"vigil while draining: {drained.batch_events_mean:.0f} events per batch; "
            f"mean per batch: {stages}"
        )
    if result.small_model_config:
        s = result.small_model_config
        console.print(
            f"small model: {s['cell']} hidden {s['hidden_size']} x {s['num_layers']}, "
            f"window {s['window']}"
        )
    if result.scale_out is not None and result.vigil is not None:
        n, total = result.workers, result.scale_out.events_per_s
        cores = min(n, result.cpus)
        console.print(
            f"{n} workers: {total:,.0f} events/s in all, {total / n:,.0f} per worker,"
            f" {total / cores:,.0f} per core ({cores} of {result.cpus} cores; the broker, Redis"
            f" and the producer share them); one worker: {result.vigil.events_per_s:,.0f}/s"
        )
    state = "ok" if result.redis_state_ok else "WRONG"
    console.print(f"Redis state after the backlog: {state} — {result.redis_state_detail}")

    loads = Table(title="Offered load: latency, backpressure, losses")
    loads.add_column("measure")
    lat, over = result.latency, result.overload
    if lat is not None:
        loads.add_column("0.5x (half max)", justify="right")
    for o in over:
        loads.add_column(f"{o.factor:g}x", justify="right")
    target2 = 2 * b["latency_target_ms"]

    def row(label: str, half: Callable[[LatencyPhase], str] | None, per_load: list[str]) -> None:
        first = [] if lat is None else [half(lat) if half is not None else ""]
        loads.add_row(label, *first, *per_load)

    def ms(value: float) -> str:
        return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"

    row(
        "offered readings/s",
        lambda h: f"{h.offered_per_s:,.0f}",
        [f"{o.offered_per_s:,.0f}" for o in over],
    )
    row(
        "achieved readings/s",
        lambda h: f"{h.achieved_per_s:,.0f}",
        [f"{o.achieved_per_s:,.0f}" for o in over],
    )
    row(
        "readings offered",
        lambda h: f"{h.events:,} in {h.seconds:.0f} s",
        [f"{o.produced:,} in {o.seconds:.0f} s" for o in over],
    )
    row("event→prediction p50", lambda h: ms(h.e2e_p50_ms), [ms(o.e2e_p50_ms) for o in over])
    row("event→prediction p99", lambda h: ms(h.e2e_p99_ms), [ms(o.e2e_p99_ms) for o in over])
    row("in-worker p50", lambda h: ms(h.in_worker_p50_ms), [ms(o.in_worker_p50_ms) for o in over])
    row("in-worker p99", lambda h: ms(h.in_worker_p99_ms), [ms(o.in_worker_p99_ms) for o in over])
    row(f"in-worker ≤ {target2:g} ms", None, [f"{o.in_worker_within_2x_target:.0%}" for o in over])
    row("in-worker p99 incl. drain", None, [ms(o.in_worker_p99_incl_drain_ms) for o in over])
    row("intake holds + full buffers", None, [str(o.pauses) for o in over])
    row(
        "intake held (max; share of 1 s samples)",
        None,
        [f"{o.paused_partitions_max}; {o.paused_share:.0%}" for o in over],
    )
    row(
        "backlog when the load stopped",
        lambda h: f"{h.backlog_at_end:,}",
        [f"{o.backlog_at_end:,}" for o in over],
    )
    row(
        "consumer group lag then",
        None,
        ["?" if o.committed_lag_at_end is None else f"{o.committed_lag_at_end:,}" for o in over],
    )
    row(
        "time to drain",
        None,
        ["not drained" if o.drain_seconds is None else f"{o.drain_seconds:.1f} s" for o in over],
    )
    row("readings without a prediction", lambda h: str(h.lost), [str(o.lost) for o in over])
    row(
        "events per batch (mean)",
        lambda h: f"{h.batch_events_mean:.0f}",
        [f"{o.batch_events_mean:.0f}" for o in over],
    )
    for stage in STAGES:
        row(
            f"  {stage} per batch (mean)",
            lambda h, stage=stage: ms(h.stage_ms.get(stage, math.nan)),  # type: ignore[misc]
            [ms(o.stage_ms.get(stage, math.nan)) for o in over],
        )
    if lat is not None or over:
        console.print(loads)  # fmt: skip

    shown = {
        "vigil_vs_passthrough": ("Vigil ÷ bare Faust passthrough", "{:.0%}", "≥ {:.0%}"),
        "p99_latency_ms_at_half_max": (
            "event→prediction p99 at half max",
            "{:.1f} ms",
            "< {:g} ms",
        ),
        "no_lost_events": ("readings without a prediction", "{}", "{}"),
    }
    console.print(target_table(result.targets(), shown))
    console.print(
        f"dead letters: {result.dead_letters}; whole run {result.seconds_total:.0f} s on "
        f"{result.cpus} CPUs, load average {result.load_average_start:.2f} → "
        f"{result.load_average_end:.2f}. On a shared machine the figures move by 10-30% "
        "between runs; the broker, Redis and this benchmark's producer share the CPUs with "
        "the worker."
    )
