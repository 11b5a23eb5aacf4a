"""Fault drills: real faults and hostile input against a real worker, broker and Redis.

Each drill feeds readings it knows the fate of (valid, or rejected for a stated reason), applies
one fault, waits until the worker has committed everything, and then checks the broker's and
Redis's view of every record:

* **lost**: valid readings missing from their key's saved state (state must count each once);
* **dropped**: readings with neither their prediction (past a key's warm-up) nor a dead letter;
* **valid dead-lettered**: valid readings sent to dead letters;
* **duplicated**: extra predictions of one reading (allowed after a crash: at-least-once output);
* **wedged**: the consumer group's committed offsets short of the end when the drill ends.

``vigil drill NAME`` runs one (``all`` runs every drill) and prints one row per drill; the
tests run short forms (``tests/drills/``), and docs/reliability.md holds the table.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from vigil.bench.prometheus_histogram import sample_total
from vigil.bench.worker_subprocess import WorkerSubprocess, free_port
from vigil.connectors.producer import kafka_client_options
from vigil.settings import (
    BatchConfig,
    DetectorConfig,
    ModelConfig,
    ModelGroup,
    StreamConfig,
    TopicNames,
    TrainingConfig,
    VigilSettings,
)
from vigil.topics import ensure_topics

WINDOW = 8
T0 = 1_700_000_000.0
STEP = 60.0
WORKER_ARGS = ("-m", "vigil.cli", "worker", "--loglevel", "info")


@dataclass
class Fed:
    """One record the drill produced and what must become of it."""

    topic: str
    key: str
    ts: float
    valid: bool
    partition: int = -1
    offset: int = -1
    reason: str | None = None  # the dead-letter code an invalid record must get


@dataclass
class DrillOutcome:
    drill: str
    produced: int
    valid: int
    predicted: int
    lost: int
    dropped: int
    duplicated: int
    dead_lettered: int
    valid_dead_lettered: int
    wedged: bool
    recovery_s: float | None
    seconds: float
    checks: dict[str, bool] = field(default_factory=dict)
    notes: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.dropped == 0
            and self.valid_dead_lettered == 0
            and not self.wedged
            and all(self.checks.values())
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def drill_groups(topics: list[str] | None = None, **group: Any) -> list[ModelGroup]:
    return [
        ModelGroup(
            name="drill",
            key_patterns=["*"],
            topics=topics or [],
            model=ModelConfig(hidden_size=8, num_layers=1, window=WINDOW, horizon=2),
            training=TrainingConfig(
                min_examples=16, holdout_size=8, batch_size=8, steps_per_round=2
            ),
            detector=DetectorConfig(warmup_events=20, cooldown_events=5),
            **group,
        )
    ]


def drill_settings(base: VigilSettings, **update: Any) -> VigilSettings:
    run = uuid.uuid4().hex[:8]
    topics = TopicNames.named(f"drill-{run}", 2)
    settings = base.model_copy(
        update={
            "app_id": f"vigil-drill-{run}",
            "topics": topics,
            "groups": drill_groups(),
            "batch": BatchConfig(max_size=256, max_wait_ms=50),
            "stream": StreamConfig(session_timeout_s=6),
        }
    )
    return settings.model_copy(update=update)


def value(ts: float, x: float | None) -> bytes:
    return json.dumps({"timestamp": ts, "value": x}).encode()


def wave(i: int, k: int = 0) -> float:
    return 10.0 * (k + 1) + (i % 7) * 0.3 + 0.1 * ((i * 7919) % 5)


# ---- Kafka and Redis, as the drills see them ----------------------------------------------------
async def produce(
    settings: VigilSettings, fed: list[Fed], payloads: list[bytes], *, max_request: int = 2 << 20
) -> None:
    """Send in order; fill in each record's partition and offset."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap, acks="all", max_request_size=max_request,
        **kafka_client_options(settings),
    )  # fmt: skip
    await producer.start()
    try:
        futures = [
            await producer.send(f.topic, p, key=f.key.encode())
            for f, p in zip(fed, payloads, strict=True)
        ]
        for f, future in zip(fed, futures, strict=True):
            meta = await future
            f.partition, f.offset = meta.partition, meta.offset
    finally:
        await producer.stop()


async def read_all(settings: VigilSettings, topic: str) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, group_id=None, auto_offset_reset="earliest",
        enable_auto_commit=False, max_partition_fetch_bytes=8 << 20,
        **kafka_client_options(settings),
    )  # fmt: skip
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]
        if not tps:
            return []
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(at >= ends[tp] for at, tp in zip(positions, tps, strict=True)):
                break
            batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in batches.values():
                found.extend(json.loads(r.value) for r in records)
        return found
    finally:
        await consumer.stop()


async def committed_lag(settings: VigilSettings, topics: list[str]) -> int:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap, **kafka_client_options(settings)
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, group_id=None, **kafka_client_options(settings)
    )
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.app_id)
        tps = [TopicPartition(t, p) for t in topics for p in range(settings.topics.partitions)]
        ends = await consumer.end_offsets(tps)
        lag = 0
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag += max(0, ends[tp] - done)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


async def create_topic(settings: VigilSettings, name: str, config: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap, **kafka_client_options(settings)
    )
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    settings.topics.partitions,
                    settings.topics.replication_factor,
                    topic_configs=config,
                )
            ]
        )
    finally:
        await admin.close()


class DrillRedis:
    """A redis-server of the drill's own (AOF, fsync always), so stopping it disturbs nobody."""

    def __init__(self, home: Path, password: str | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> DrillRedis:
        self.home.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.home),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=1).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError(f"drill redis-server did not answer on {self.url}")

    def stop(self) -> None:
        """A clean shutdown (everything written is on disk); connections are refused after."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(20)


# ---- the common check ------------------------------------------------------------------------
class DrillRun:
    """One drill's settings, worker(s) and verdict."""

    def __init__(self, name: str, settings: VigilSettings, workdir: Path) -> None:
        self.name = name
        self.settings = settings
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.fed: list[Fed] = []
        self.workers: list[WorkerSubprocess] = []
        self.started = time.monotonic()
        self.checks: dict[str, bool] = {}
        self.notes: list[str] = []

    def worker(self, label: str = "worker") -> WorkerSubprocess:
        worker = WorkerSubprocess(self.settings, self.workdir / f"{label}.log", WORKER_ARGS)
        self.workers.append(worker)
        return worker.start()

    async def feed(self, records: list[tuple[Fed, bytes]], **kwargs: Any) -> None:
        fed = [f for f, _ in records]
        await produce(self.settings, fed, [p for _, p in records], **kwargs)
        self.fed.extend(fed)

    def input_topics(self) -> list[str]:
        return sorted({f.topic for f in self.fed})

    async def settle(self, timeout_s: float = 120.0) -> float | None:
        """Seconds until the group has committed every input record (None: it never did)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    worker.check_alive()
            if await committed_lag(self.settings, self.input_topics()) == 0:
                return time.monotonic() - start
            await asyncio.sleep(0.5)
        return None

    async def process_backlog(self) -> float | None:
        """A worker takes what was fed, until all is committed; the seconds it took."""
        worker = self.worker()
        try:
            await asyncio.to_thread(worker.wait_ready)
            return await self.settle()
        finally:
            self.stop_workers()

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    async def verdict(self, recovery_s: float | None, wedged: bool) -> DrillOutcome:
        settings = self.settings
        predictions = await read_all(settings, settings.topics.predictions)
        letters = await read_all(settings, settings.topics.dead_letters)
        by_position = {(f.topic, f.partition, f.offset): f for f in self.fed}
        predicted = Counter(
            (p["provenance"]["topic"], p["provenance"]["partition"], p["provenance"]["offset"])
            for p in predictions
        )
        lettered = {(d["topic"], d["partition"], d["offset"]): d for d in letters}
        for position, letter in lettered.items():
            fed = by_position.get(position)
            if fed is not None and fed.reason and letter.get("code") != fed.reason:
                self.checks[f"dead letter code {fed.reason}"] = False
        expected = self._expected_predictions()
        dropped = sum(1 for p in expected if p not in predicted) + sum(
            1 for f in self.fed if not f.valid and (f.topic, f.partition, f.offset) not in lettered
        )
        valid = [f for f in self.fed if f.valid]
        client = redis.Redis.from_url(settings.redis)
        absorbed = 0
        for key in {f.key for f in valid}:
            raw = client.get(f"vigil:{settings.app_id}:state:drill:{key}")
            absorbed += json.loads(raw)["events"] if raw else 0
        client.close()
        return DrillOutcome(
            drill=self.name,
            produced=len(self.fed),
            valid=len(valid),
            predicted=sum(1 for p in expected if p in predicted),
            lost=max(0, len(valid) - absorbed),
            dropped=dropped,
            duplicated=sum(c - 1 for c in predicted.values() if c > 1),
            dead_lettered=len(lettered),
            valid_dead_lettered=sum(
                1 for f in valid if (f.topic, f.partition, f.offset) in lettered
            ),
            wedged=wedged,
            recovery_s=None if recovery_s is None else round(recovery_s, 1),
            seconds=round(time.monotonic() - self.started, 1),
            checks=dict(self.checks) | {"state counts each reading once": absorbed == len(valid)},
            notes="; ".join(self.notes),
        )

    def _expected_predictions(self) -> list[tuple[str, int, int]]:
        """Valid readings past their key's warm-up (the first window-1 in time order)."""
        per_key: dict[str, list[Fed]] = defaultdict(list)
        for f in self.fed:
            if f.valid:
                per_key[f.key].append(f)
        out: list[tuple[str, int, int]] = []
        for rows in per_key.values():
            rows.sort(key=lambda f: (f.ts, f.offset))
            out.extend((f.topic, f.partition, f.offset) for f in rows[WINDOW - 1 :])
        return out


def _series(topic: str, keys: list[str], n: int, *, start: int = 0) -> list[tuple[Fed, bytes]]:
    return [
        (Fed(topic, key, T0 + STEP * i, True), value(T0 + STEP * i, wave(i, k)))
        for i in range(start, start + n)
        for k, key in enumerate(keys)
    ]


# ---- the drills ------------------------------------------------------------------------------
async def oversized_record(base: VigilSettings, workdir: Path, short: bool) -> DrillOutcome:
    """#1: a 600 KB binary value amid valid readings, with a dead-letter topic that takes at most
    8 KB per record: the dead letter is cut, then refused and sent without its copy; nothing
    else in its batch suffers and the partition moves on."""
    settings = drill_settings(base)
    await create_topic(settings, settings.topics.dead_letters, {"max.message.bytes": "8192"})
    await ensure_topics(settings)
    run = DrillRun("oversized_record", settings, workdir)
    records = _series(settings.topics.readings, [f"k{i}" for i in range(4)], 50)
    big = (Fed(settings.topics.readings, "k1", T0 + STEP * 25.5, False, reason="not_json"),
           os.urandom(600_000))  # fmt: skip
    records.insert(len(records) // 2, big)
    await run.feed(records)
    recovery = await run.process_backlog()
    letters = await read_all(settings, settings.topics.dead_letters)
    big_letter = [d for d in letters if d.get("original_size") == 600_000]
    run.checks["600 KB record dead-lettered, copy cut"] = bool(big_letter) and all(
        d["original_truncated"] for d in big_letter
    )
    return await run.verdict(recovery, recovery is None)


async def redis_outage(
    base: VigilSettings, workdir: Path, short: bool, *, kill_during: bool = False
) -> DrillOutcome:
    """#2: Redis stops for a while mid-stream (optionally the worker is SIGKILLed during the
    outage and restarted): the worker pauses and retries; no event is dead-lettered, state
    counts each event once, /ready answers 503 during the outage."""
    drill_redis = DrillRedis(workdir / "redis-outage" / ("kill" if kill_during else "plain"))
    drill_redis.start()
    settings = drill_settings(base.model_copy(update={"redis_url": drill_redis.url}))
    await ensure_topics(settings)
    name = "redis_outage_with_kill" if kill_during else "redis_outage"
    run = DrillRun(name, settings, workdir)
    keys = [f"k{i}" for i in range(4)]
    per_burst, bursts, outage_s = (10, 12, 6.0) if short else (25, 20, 17.0)
    worker = run.worker()
    recovery: float | None = None
    try:
        worker.wait_ready()
        for b in range(bursts):
            await run.feed(_series(settings.topics.readings, keys, per_burst, start=b * per_burst))
            await asyncio.sleep(0.5)
            if b == bursts // 3:
                drill_redis.stop()
                stopped = time.monotonic()
                await asyncio.sleep(1.5)
                ready = httpx.get(f"{worker.url}/ready", timeout=5).status_code
                run.checks["/ready is 503 during the outage"] = ready == 503
            if b == bursts // 3 + 2 and kill_during:
                worker.kill()
                worker = run.worker("worker-2")
            if b == bursts // 3 + 3:
                await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - stopped)))
                drill_redis.start()
                back = time.monotonic()
        worker.wait_ready()
        settled = await run.settle()
        recovery = None if settled is None else time.monotonic() - back
    finally:
        run.stop_workers()
    log_text = "\n".join(w.log_path.read_text(errors="replace") for w in run.workers)
    run.checks["no tracebacks in the worker log"] = "Traceback" not in log_text
    outage_lines = log_text.count("redis is unreachable") + log_text.count("redis is back")
    run.notes.append(f"outage log lines: {outage_lines}")
    outcome = await run.verdict(recovery, recovery is None)
    drill_redis.stop()
    return outcome


async def broker_outage(base: VigilSettings, workdir: Path, short: bool) -> DrillOutcome:
    """The local broker stops mid-stream and comes back: /ready says 503 meanwhile, the log
    gets a few lines (not thousands), and every reading is processed once it is back."""
    from vigil.local_kafka import LocalKafka

    # A broker of the drill's own (the same jars, other ports and data), so stopping it
    # disturbs nobody else; the drill's Redis is the shared one.
    home = (workdir / "broker_outage" / "home").resolve()
    jars = f"kafka-{base.local.kafka_version}"
    home.mkdir(parents=True, exist_ok=True)
    shared_jars = LocalKafka(base).fetch().parent
    if not (home / jars).exists():
        (home / jars).symlink_to(shared_jars)
    local = base.local.model_copy(
        update={"kafka_port": free_port(), "controller_port": free_port(), "home": home}
    )
    own = base.model_copy(update={"kafka_bootstrap": None, "local": local})
    broker = LocalKafka(own)
    await asyncio.to_thread(broker.start)
    settings = drill_settings(own)
    await ensure_topics(settings)
    run = DrillRun("broker_outage", settings, workdir)
    keys = [f"k{i}" for i in range(4)]
    outage_s = 10.0 if short else 30.0
    worker = run.worker()
    try:
        worker.wait_ready()
        for b in range(4):
            await run.feed(_series(settings.topics.readings, keys, 10, start=b * 10))
            await asyncio.sleep(0.5)
        await asyncio.to_thread(broker.stop)
        stopped = time.monotonic()
        await asyncio.sleep(4)
        ready = httpx.get(f"{worker.url}/ready", timeout=10).status_code
        run.checks["/ready is 503 while the broker is down"] = ready == 503
        await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - stopped)))
        await asyncio.to_thread(broker.start)
        back = time.monotonic()
        for b in range(4, 8):
            await run.feed(_series(settings.topics.readings, keys, 10, start=b * 10))
        worker.wait_ready(timeout_s=180)
        settled = await run.settle(timeout_s=180)
        recovery = None if settled is None else time.monotonic() - back
        log_text = worker.log_path.read_text(errors="replace")
        errors = sum(1 for line in log_text.splitlines() if "[ERROR]" in line)
        run.checks["the outage logged under 100 ERROR lines"] = errors < 100
        run.notes.append(f"{errors} ERROR lines over a {outage_s:.0f} s outage")
        return await run.verdict(recovery, recovery is None)
    finally:
        run.stop_workers()
        await asyncio.to_thread(broker.stop)


async def sigterm_during_outage(base: VigilSettings, workdir: Path, short: bool) -> DrillOutcome:
    """A worker told to stop (SIGTERM) while Redis is away stops within seconds, and a new
    worker, once Redis is back, processes what the first could not save."""
    drill_redis = DrillRedis(workdir / "sigterm-outage").start()
    settings = drill_settings(base.model_copy(update={"redis_url": drill_redis.url}))
    await ensure_topics(settings)
    run = DrillRun("sigterm_during_outage", settings, workdir)
    keys = ["k0", "k1"]
    try:
        worker = run.worker()
        await asyncio.to_thread(worker.wait_ready)
        await run.feed(_series(settings.topics.readings, keys, 30))
        await asyncio.sleep(2)
        drill_redis.stop()
        await run.feed(_series(settings.topics.readings, keys, 30, start=30))
        await asyncio.sleep(3)
        asked = time.monotonic()
        await asyncio.to_thread(worker.stop)  # SIGTERM, SIGKILL after 30 s
        took = time.monotonic() - asked
        run.checks["stopped within 15 s of SIGTERM during the outage"] = took < 15
        run.notes.append(f"stopped {took:.1f} s after SIGTERM")
        drill_redis.start()
        back = time.monotonic()
        recovery = None if await run.process_backlog() is None else time.monotonic() - back
        return await run.verdict(recovery, recovery is None)
    finally:
        run.stop_workers()
        drill_redis.stop()


async def reorder_in_batch(base: VigilSettings, workdir: Path, short: bool) -> DrillOutcome:
    """#3 and #5: ten swapped timestamp pairs and one year-9999 reading in one backlog: every
    swapped reading is put back in order and predicted; the year-9999 one is dead-lettered as
    future and blackholes nothing after it."""
    # a second to gather the backlog into one batch: the batch is the reorder buffer, and a
    # pair split across two batches is late by definition (dead-lettered, documented)
    settings = drill_settings(base, batch=BatchConfig(max_size=512, max_wait_ms=1000))
    await ensure_topics(settings)
    run = DrillRun("reorder_in_batch", settings, workdir)
    topic = settings.topics.readings
    rows = [
        (Fed(topic, "k0", T0 + STEP * i, True), value(T0 + STEP * i, wave(i))) for i in range(140)
    ]
    for i in range(20, 120, 10):  # ten swapped pairs
        rows[i], rows[i + 1] = rows[i + 1], rows[i]
    future = b'{"timestamp": "9999-12-31T23:59:59Z", "value": 1.0}'
    rows.insert(70, (Fed(topic, "k0", 253_402_300_799.0, False, reason="future"), future))
    await run.feed(rows)
    recovery = await run.process_backlog()
    return await run.verdict(recovery, recovery is None)


async def huge_value(base: VigilSettings, workdir: Path, short: bool) -> DrillOutcome:
    """#4: ``1e308`` (out of range) and ``1e11`` (in range, absurd) in one key, beside other
    keys; then a restart: forecasts stay finite, the saved state loads, other keys unharmed."""
    settings = drill_settings(base)
    await ensure_topics(settings)
    run = DrillRun("huge_value", settings, workdir)
    topic = settings.topics.readings
    keys = ["k0", "k1", "k2"]
    first = _series(topic, keys, 40)
    first.append((Fed(topic, "k0", T0 + STEP * 40, False, reason="out_of_range"),
                  value(T0 + STEP * 40, 1e308)))  # fmt: skip
    first.append((Fed(topic, "k0", T0 + STEP * 41, True), value(T0 + STEP * 41, 1e11)))
    first.extend(_series(topic, ["k1", "k2"], 2, start=40))
    await run.feed(first)
    worker = run.worker()
    try:
        worker.wait_ready()
        await run.settle()
        worker.stop()
        await run.feed(_series(topic, keys, 40, start=42))
        worker = run.worker("worker-2")
        worker.wait_ready()
        recovery = await run.settle()
    finally:
        run.stop_workers()
    predictions = await read_all(settings, settings.topics.predictions)
    finite = all(
        all(isinstance(x, float | int) for x in p["forecast"] + p["lower"] + p["upper"])
        for p in predictions
    )
    run.checks["every forecast and bound finite"] = finite
    logs = "\n".join(w.log_path.read_text(errors="replace") for w in run.workers)
    run.checks["saved state loads after restart"] = "cannot be loaded" not in logs
    return await run.verdict(recovery, recovery is None)


async def far_future(base: VigilSettings, workdir: Path, short: bool) -> DrillOutcome:
    """#5: a key with history gets one reading stamped 9999-12-31, then 50 valid ones."""
    settings = drill_settings(base)
    await ensure_topics(settings)
    run = DrillRun("far_future", settings, workdir)
    topic = settings.topics.readings
    rows = _series(topic, ["k0"], 20)
    future = b'{"timestamp": "9999-12-31T23:59:59Z", "value": 5.0}'
    rows.append((Fed(topic, "k0", 253_402_300_799.0, False, reason="future"), future))
    await run.feed(rows)
    worker = run.worker()
    try:
        worker.wait_ready()
        await run.settle()
        await run.feed(_series(topic, ["k0"], 50, start=20))
        recovery = await run.settle()
    finally:
        run.stop_workers()
    return await run.verdict(recovery, recovery is None)


async def two_topics(base: VigilSettings, workdir: Path, short: bool) -> DrillOutcome:
    """#6: one group reads two topics; a key's history arrives on one and its continuation on
    the other, whose offsets are lower: none of it is taken for a replay."""
    run_id = uuid.uuid4().hex[:8]
    first, second = f"drill-{run_id}.plant-a", f"drill-{run_id}.plant-b"
    settings = drill_settings(base, groups=drill_groups(topics=[first, second]))
    await ensure_topics(settings)
    run = DrillRun("two_topics", settings, workdir)
    await run.feed(_series(first, ["k0", "k1"], 150))
    worker = run.worker()
    try:
        worker.wait_ready()
        await run.settle()
        await run.feed(_series(second, ["k0", "k1"], 150, start=150))
        recovery = await run.settle()
    finally:
        run.stop_workers()
    return await run.verdict(recovery, recovery is None)


async def idle_keys(base: VigilSettings, workdir: Path, short: bool) -> DrillOutcome:
    """#9: many keys seen once and then idle leave worker memory; their state in Redis has a
    TTL; a key that comes back resumes from its saved state."""
    settings = drill_settings(
        base, stream=StreamConfig(session_timeout_s=6, idle_key_evict_s=2, state_ttl_s=3600)
    )
    await ensure_topics(settings)
    run = DrillRun("idle_keys", settings, workdir)
    n_keys = 500 if short else 10_000
    keys = [f"k{i}" for i in range(n_keys)]
    await run.feed(_series(settings.topics.readings, keys, WINDOW))
    worker = run.worker()
    try:
        worker.wait_ready()
        rss_empty = _rss_kb(worker)
        run.checks["the backlog was processed"] = await run.settle(timeout_s=900) is not None
        peak = sample_total(worker.metrics(), "vigil_keys_in_memory")
        rss_full = _rss_kb(worker)
        await asyncio.sleep(4)
        evicted = sample_total(worker.metrics(), "vigil_keys_evicted_total")
        in_memory = sample_total(worker.metrics(), "vigil_keys_in_memory")
        rss_idle = _rss_kb(worker)
        await run.feed(_series(settings.topics.readings, keys[:10], 4, start=WINDOW))
        recovery = await run.settle()
    finally:
        run.stop_workers()
    client = redis.Redis.from_url(settings.redis)
    ttl = client.ttl(f"vigil:{settings.app_id}:state:drill:{keys[-1]}")
    client.close()
    run.checks["idle keys left memory"] = evicted >= n_keys - 10 and in_memory <= 10
    run.checks["state has a TTL in Redis"] = isinstance(ttl, int) and 0 < ttl <= 3600
    run.notes.append(
        f"{n_keys} keys: peak in memory {peak:.0f}, after idle {in_memory:.0f};"
        f" worker RSS {rss_empty} KB before, {rss_full} KB after, {rss_idle} KB idle"
    )
    return await run.verdict(recovery, recovery is None)


async def refused_record(base: VigilSettings, workdir: Path, short: bool) -> DrillOutcome:
    """#10: Vigil's connector producer gets one record refused by the broker (over the topic's
    max.message.bytes); every record after it is still delivered, none reordered or lost."""
    from vigil.connectors.producer import DeliveryError, RecordProducer

    settings = drill_settings(base)
    await create_topic(settings, settings.topics.readings, {"max.message.bytes": "4096"})
    await ensure_topics(settings)
    run = DrillRun("refused_record", settings, workdir)
    topic = settings.topics.readings
    refused = 0
    async with RecordProducer(settings) as producer:
        for i in range(60):
            await producer.send_raw(topic, value(T0 + STEP * i, wave(i)), b"k0")
        await producer.flush()
        await producer.send_raw(topic, b'{"timestamp": 1, "value": 1, "pad": "' + b"x" * 20_000
                                + b'"}', b"k0")  # fmt: skip
        try:
            await producer.flush()
        except DeliveryError:
            refused += 1
        for i in range(60, 120):
            await producer.send_raw(topic, value(T0 + STEP * i, wave(i)), b"k0")
        await producer.flush()
    stored = await read_all(settings, topic)
    timestamps = [r["timestamp"] for r in stored]
    checks = {
        "the oversized record was refused": refused == 1,
        "the 120 others delivered, in order": timestamps == [T0 + STEP * i for i in range(120)],
    }
    return DrillOutcome(
        drill="refused_record", produced=121, valid=120, predicted=0,
        lost=120 - len(stored), dropped=0, duplicated=len(stored) - len(set(timestamps)),
        dead_lettered=0, valid_dead_lettered=0, wedged=False, recovery_s=None,
        seconds=round(time.monotonic() - run.started, 1), checks=checks,
        notes="connector producer (idempotent); the worker's producer is drilled by"
        " oversized_record",
    )  # fmt: skip


def _rss_kb(worker: WorkerSubprocess) -> int:
    if worker.process is None:
        return 0
    status = Path(f"/proc/{worker.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1])


Drill = Callable[[VigilSettings, Path, bool], Coroutine[Any, Any, DrillOutcome]]
DRILLS: dict[str, Drill] = {
    "oversized_record": oversized_record,
    "redis_outage": redis_outage,
    "redis_outage_with_kill": lambda b, w, s: redis_outage(b, w, s, kill_during=True),
    "broker_outage": broker_outage,
    "sigterm_during_outage": sigterm_during_outage,
    "reorder_in_batch": reorder_in_batch,
    "huge_value": huge_value,
    "far_future": far_future,
    "two_topics": two_topics,
    "idle_keys": idle_keys,
    "refused_record": refused_record,
}


def print_table(outcomes: list[DrillOutcome]) -> None:
    head = ("drill", "produced", "predicted", "lost", "dropped", "duplicated", "dead-lettered",
            "valid dead-lettered", "wedged", "recovery s", "ok")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for o in outcomes:
        recovery = "—" if o.recovery_s is None else o.recovery_s
        cells = (o.drill, o.produced, o.predicted, o.lost, o.dropped, o.duplicated,
                 o.dead_lettered, o.valid_dead_lettered, "yes" if o.wedged else "no",
                 recovery, "yes" if o.ok else "NO")  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    for o in outcomes:
        failed = [name for name, passed in o.checks.items() if not passed]
        if failed or o.notes:
            print(f"- {o.drill}: " + "; ".join([*(f"FAILED {f}" for f in failed), o.notes]))
