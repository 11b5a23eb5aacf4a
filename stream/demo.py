"""`vigil demo`: the whole pipeline on local Kafka and Redis with the shipped real sample.

Starts the services, a real worker process (`vigil worker`), replays the sample through the file
connector into the readings topic, and prints predictions and alerts as they arrive on their
topics. Every run uses topics and an app id of its own, so reruns start clean.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table

from vigil import local_services
from vigil.connectors.file_formats import ColumnChoice
from vigil.connectors.producer import RecordProducer, kafka_client_options
from vigil.connectors.replay import FileReplay
from vigil.records import Reading
from vigil.settings import (
    BatchConfig,
    DetectorConfig,
    ModelConfig,
    ModelGroup,
    TopicNames,
    TrainingConfig,
    VigilSettings,
)
from vigil.topics import ensure_topics

console = Console(soft_wrap=True)  # one line per record, also in CI logs


def demo_groups() -> list[ModelGroup]:
    """Market and sensor series behave differently, so they get model groups of their own.

    The demo replays years of history in seconds, so its trainers get a whole core
    (``cpu_share=1``): at the default quarter they would see a few rounds in the whole replay.
    Forecasts use what was measured best on such series (docs/evaluation.md): prices combined
    with persistence (a daily close is close to a random walk), sensors with seasonal lags too.
    """
    return [
        ModelGroup(
            name="market",
            key_patterns=["market.*"],
            model=ModelConfig(
                cell="lstm",
                hidden_size=32,
                num_layers=1,
                window=32,
                horizon=5,
                combine="persistence",
            ),
            training=TrainingConfig(
                min_examples=64, holdout_size=32, steps_per_round=10, cpu_share=1.0
            ),
            detector=DetectorConfig(
                warmup_events=64, threshold=0.995, clear_threshold=0.9, cooldown_events=20
            ),
        ),
        ModelGroup(
            name="sensors",
            key_patterns=["sensor.*"],
            model=ModelConfig(
                cell="lstm",
                hidden_size=64,
                num_layers=2,
                window=48,
                horizon=1,
                season_lag="auto",
                combine="persistence",
            ),
            training=TrainingConfig(
                min_examples=128, holdout_size=64, steps_per_round=10, cpu_share=1.0
            ),
            detector=DetectorConfig(
                warmup_events=300, threshold=0.995, clear_threshold=0.9, cooldown_events=48
            ),
        ),
    ]


def sample_readings() -> list[tuple[str, Reading]]:
    """The shipped sample as (key, reading), merged in time order as a live feed would be."""
    root = resources.files("vigil") / "demo_data"
    rows: list[tuple[str, Reading]] = []
    for name, key in (
        ("nyc_taxi.csv", "sensor.nyc_taxi"),
        ("ec2_cpu_utilization_5f5533.csv", "sensor.ec2_cpu_utilization_5f5533"),
    ):
        with (root / name).open() as handle:
            for row in csv.DictReader(handle):
                rows.append((key, Reading(timestamp=row["timestamp"], value=float(row["value"]))))
    with (root / "stocks_close.csv").open() as handle:
        for row in csv.DictReader(handle):
            rows.append(
                (f"market.{row['Name']}", Reading(timestamp=row["date"], value=float(row["close"])))
            )
    rows.sort(key=lambda kv: kv[1].ts)
    return rows


def demo_labels() -> dict[str, list[tuple[float, float]]]:
    raw = json.loads((resources.files("vigil") / "demo_data" / "labels.json").read_text())
    parse = lambda s: datetime.fromisoformat(s).timestamp()  # noqa: E731
    return {key: [(parse(a), parse(b)) for a, b in windows] for key, windows in raw.items()}


@dataclass
class DemoTally:
    predictions: int = 0
    alerts: list[dict] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)
    per_key: dict[str, int] = field(default_factory=dict)
    first_at: float | None = None
    last_at: float | None = None


def run_demo(
    settings: VigilSettings, *, speedup: float, seconds: float, keep_up: bool,
    exit_after_replay: bool = False,
) -> int:  # fmt: skip
    """Replay the sample through a worker; then, unless ``exit_after_replay``, keep the worker
    (and its web UI) up until Ctrl-C so the results can be looked at in a browser."""
    console.rule("[bold]Vigil demo")
    started = local_services.up(settings)
    console.print(
        f"Kafka {settings.bootstrap}  Redis {settings.redis}"
        + (f"  (started {', '.join(started)})" if started else "")
    )
    run = time.strftime("%Y%m%d-%H%M%S")
    topics = TopicNames(
        readings=f"demo-{run}.readings", predictions=f"demo-{run}.predictions",
        alerts=f"demo-{run}.alerts",
        dead_letters=f"demo-{run}.dead-letters", model_versions=f"demo-{run}.model-versions",
        drift=f"demo-{run}.drift", partitions=4,
    )  # fmt: skip
    demo = settings.model_copy(update={
        "app_id": f"vigil-demo-{run}", "topics": topics, "groups": demo_groups(),
        "batch": BatchConfig(max_size=256, max_wait_ms=5),
    })  # fmt: skip
    asyncio.run(ensure_topics(demo))
    web_port = int(os.environ.get("VIGIL_DEMO_WEB_PORT", "6067"))
    worker = _start_worker(demo, web_port)
    try:
        _wait_ready(worker, web_port)
        readings = sample_readings()
        console.print(
            f"Replaying {len(readings)} real readings ({len({k for k, _ in readings})} series) …"
        )
        tally = asyncio.run(_replay_and_watch(demo, readings, speedup, seconds))
        _summary(tally, readings, web_port)
        if not exit_after_replay:
            _stay_up(worker, web_port, settings)
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        asyncio.run(_delete_topics(demo))
        if not keep_up:
            local_services.down(settings)
    return 0 if tally.predictions > 0 else 1


def _start_worker(settings: VigilSettings, web_port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update({
        "VIGIL_APP_ID": settings.app_id,
        "VIGIL_TOPICS": settings.topics.model_dump_json(),
        "VIGIL_GROUPS": json.dumps([g.model_dump(mode="json") for g in settings.groups]),
        "VIGIL_BATCH": settings.batch.model_dump_json(),
        "VIGIL_KAFKA_BOOTSTRAP": settings.bootstrap,
        "VIGIL_REDIS_URL": settings.redis,
        "VIGIL_WEB_PORT": str(web_port),
    })  # fmt: skip
    log_path = Path(settings.local.home) / f"demo-worker-{settings.app_id}.log"
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "vigil.cli", "worker", "--loglevel", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_ready(worker: subprocess.Popen[bytes], web_port: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    with console.status("Starting the worker (model load, partition assignment) …"):
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise SystemExit(
                    f"the worker exited with {worker.returncode}; see .vigil/demo-worker-*.log"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{web_port}/ready", timeout=1).status_code == 200:
                    console.print(
                        f"Worker ready: http://127.0.0.1:{web_port}/ui (web UI), /ready,"
                        " /metrics, /predictions/<key>"
                    )
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    raise SystemExit("the worker did not become ready in time")


def _stay_up(worker: subprocess.Popen[bytes], web_port: int, settings: VigilSettings) -> None:
    """Keep the worker serving its pages until Ctrl-C (or until it exits by itself)."""
    console.rule("[bold]Look at it")
    console.print(f"[bold]Open http://127.0.0.1:{web_port}/ui[/] — keys, live charts, alerts,"
                  " silences, models. Ctrl-C stops the worker.")  # fmt: skip
    if settings.web_token is None:
        console.print("The pages are read-only: start the demo with VIGIL_WEB_TOKEN=<a secret> to"
                      " create silences or promote models from them.")  # fmt: skip
    try:
        while worker.poll() is None:
            time.sleep(0.5)
        console.print(f"the worker stopped (exit code {worker.returncode})")
    except KeyboardInterrupt:
        console.print("stopping …")


async def _replay_and_watch(
    settings: VigilSettings, readings: list[tuple[str, Reading]], speedup: float, seconds: float
) -> DemoTally:
    tally = DemoTally()
    consumer = AIOKafkaConsumer(
        settings.topics.predictions, settings.topics.alerts, settings.topics.model_versions,
        bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest", group_id=None,
        **kafka_client_options(settings),
    )  # fmt: skip
    await consumer.start()
    labels = demo_labels()
    expected = _expected_predictions(settings, readings)
    watcher = asyncio.create_task(_watch(consumer, tally, labels, expected))
    try:
        data = Path(str(resources.files("vigil") / "demo_data"))
        async with RecordProducer(settings) as producer:
            # The file connector, as a user would run it: NAB series keyed by file name,
            # stock closes keyed by ticker; both replays run side by side.
            sensors = FileReplay(
                [data / "nyc_taxi.csv", data / "ec2_cpu_utilization_5f5533.csv"], producer, None,
                columns=ColumnChoice(values=("value",), key_prefix="sensor."), speed=speedup,
            )  # fmt: skip
            market = FileReplay(
                [data / "stocks_close.csv"], producer, None,
                columns=ColumnChoice(values=("close",), key_column="Name", key_prefix="market."),
                speed=speedup,
            )  # fmt: skip
            await asyncio.gather(sensors.run(), market.run())
            await producer.flush()
        await asyncio.wait_for(watcher, timeout=seconds)
    except TimeoutError:
        console.print(
            f"[yellow]stopped after {seconds:.0f}s with {tally.predictions}/{expected} predictions"
        )
    finally:
        watcher.cancel()
        await consumer.stop()
    return tally


def _expected_predictions(settings: VigilSettings, readings: list[tuple[str, Reading]]) -> int:
    counts: dict[str, int] = {}
    for key, _ in readings:
        counts[key] = counts.get(key, 0) + 1
    total = 0
    for key, n in counts.items():
        group = settings.group_for(key)
        if group is not None:
            total += max(0, n - group.model.window + 1)
    return total


async def _watch(
    consumer: AIOKafkaConsumer,
    tally: DemoTally,
    labels: dict[str, list[tuple[float, float]]],
    expected: int,
) -> None:
    predictions_topic = next(t for t in consumer.subscription() if t.endswith(".predictions"))
    alerts_topic = next(t for t in consumer.subscription() if t.endswith(".alerts"))
    async for message in consumer:
        record = json.loads(message.value)
        now = time.monotonic()
        if message.topic == predictions_topic:
            tally.predictions += 1
            tally.first_at = tally.first_at or now
            tally.last_at = now
            key = record["key"]
            tally.per_key[key] = tally.per_key.get(key, 0) + 1
            tally.versions.add(record["provenance"]["model_version"])
            if tally.per_key[key] % 250 == 1:
                _print_prediction(record)
            if tally.predictions >= expected:
                return
        elif message.topic == alerts_topic:
            tally.alerts.append(record)
            _print_alert(record, labels)
        else:
            console.print(
                f"[magenta]model {record['version']} is live for group {record['group']}"
                f" ({record['reason']})"
            )


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _print_prediction(p: dict) -> None:
    forecast = ", ".join(f"{v:.2f}" for v in p["forecast"][:3])
    console.print(
        f"[cyan]{p['key']:24}[/] {_when(p['timestamp'])}  observed {p['observed']:>10.2f}"
        f"  next [{forecast}]  90% [{p['lower'][0]:.2f}, {p['upper'][0]:.2f}]"
        f"  score {p['score']:.3f}  model {p['provenance']['model_version']}"
    )


def _print_alert(a: dict, labels: dict[str, list[tuple[float, float]]]) -> None:
    windows = labels.get(a["key"], [])
    labelled = any(lo <= a["start"] <= hi for lo, hi in windows)
    tag = "  [green](inside a NAB-labelled anomaly window)" if labelled else ""
    colour = "red" if a["status"] == "firing" else "green"
    span = _when(a["start"]) + (f" → {_when(a['end'])}" if a.get("end") else "")
    console.print(
        f"[bold {colour}]ALERT {a['status']:8}[/] {a['key']:24} {span}  severity {a['severity']:8}"
        f" score {a['score']:.4f}  id {a['alert_id']}{tag}"
    )


def _summary(tally: DemoTally, readings: list[tuple[str, Reading]], web_port: int) -> None:
    table = Table(title="Demo summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    elapsed = (tally.last_at or 0) - (tally.first_at or 0)
    table.add_row("readings replayed", str(len(readings)))
    table.add_row("predictions received", str(tally.predictions))
    table.add_row(
        "predictions/s (end to end)", f"{tally.predictions / elapsed:.0f}" if elapsed > 0 else "-"
    )
    table.add_row("alerts (firing)", str(sum(a["status"] == "firing" for a in tally.alerts)))
    table.add_row("model versions seen", str(len(tally.versions)))
    console.print(table)
    try:
        metrics = httpx.get(f"http://127.0.0.1:{web_port}/metrics", timeout=2).text
        wanted = (
            "vigil_event_to_prediction_seconds_count",
            "vigil_training_steps_total",
            "vigil_model_promotions_total",
        )
        for line in metrics.splitlines():
            if line.startswith(wanted):
                console.print(f"  {line}")
    except httpx.HTTPError:
        pass


async def _delete_topics(settings: VigilSettings) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap, **kafka_client_options(settings)
    )
    await admin.start()
    try:
        t = settings.topics
        await admin.delete_topics(
            [t.readings, t.predictions, t.alerts, t.dead_letters, t.model_versions, t.drift]
        )
    except Exception:
        pass
    finally:
        await admin.close()
