"""The operator commands against the real Kafka and Redis: `vigil tail`, `vigil state`,
`vigil dlq redrive`, `vigil models export/import`, and their one-line failures."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch
from aiokafka import AIOKafkaConsumer, TopicPartition
from typer.testing import CliRunner, Result

from tests.kafka_io import produce, read_topic, reading
from vigil.cli import app
from vigil.models import state_codec
from vigil.models.forecaster import build_forecaster
from vigil.models.registry import ModelRegistry
from vigil.records import Alert, DeadLetter, Prediction, Provenance
from vigil.settings import DetectorConfig, ModelConfig, ModelGroup, VigilSettings
from vigil.stream.key_state import KeyState
from vigil.topics import ensure_topics

pytestmark = pytest.mark.services

GROUPS = [
    ModelGroup(
        name="sensors",
        key_patterns=["sensor-*"],
        model=ModelConfig(hidden_size=8, num_layers=1, window=6, horizon=1),
        detector=DetectorConfig(warmup_events=0),
    ),
    ModelGroup(name="default"),
]


def cli_env(settings: VigilSettings) -> dict[str, str]:
    return {
        "VIGIL_APP_ID": settings.app_id,
        "VIGIL_TOPICS": settings.topics.model_dump_json(),
        "VIGIL_GROUPS": json.dumps([g.model_dump(mode="json") for g in settings.groups]),
        "VIGIL_KAFKA_BOOTSTRAP": settings.bootstrap,
        "VIGIL_REDIS_URL": settings.redis,
    }


@pytest.fixture
def ops(settings: VigilSettings, monkeypatch: pytest.MonkeyPatch) -> Iterator[VigilSettings]:
    """This test's settings, its topics created, and the environment every command reads."""
    configured = settings.model_copy(update={"groups": GROUPS})
    asyncio.run(ensure_topics(configured))
    for name, value in cli_env(configured).items():
        monkeypatch.setenv(name, value)
    yield configured
    client = redis.Redis.from_url(configured.redis)
    names = list(client.scan_iter(match=f"vigil:{configured.app_id}:*", count=1000))
    if names:
        client.delete(*names)
    client.close()


def vigil(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input)


def prediction(key: str, ts: float, offset: int, score: float = 0.1) -> Prediction:
    return Prediction(
        key=key, timestamp=ts, forecast=[1.5], lower=[1.0], upper=[2.0], observed=1.25,
        score=score, anomaly=score > 0.99, group="sensors",
        provenance=Provenance(
            topic="vigil.readings", partition=0, offset=offset, model_version="sensors-000001-ab",
            vigil_version="test",
        ),
    )  # fmt: skip


async def end_total(settings: VigilSettings, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


# ---- vigil tail --------------------------------------------------------------------------------
def test_tail_prints_one_readable_line_per_record_filtered_by_key(ops: VigilSettings) -> None:
    t0 = 1_700_000_000
    records: list[tuple[bytes | None, bytes]] = [
        (b"sensor-a", prediction("sensor-a", t0, 10).model_dump_json().encode()),
        (b"sensor-b", prediction("sensor-b", t0 + 60, 11, score=0.995).model_dump_json().encode()),
        (b"sensor-a", prediction("sensor-a", t0 + 120, 12).model_dump_json().encode()),
        (b"sensor-a", b"{garbage"),
    ]
    asyncio.run(produce(ops, ops.topics.predictions, records))

    lines = vigil("tail", "predictions", "--from-beginning", "--key", "sensor-a", "--limit", "2")
    assert lines.exit_code == 0, lines.output
    out = lines.stdout.splitlines()
    assert len(out) == 2
    assert out[0].startswith("2023-11-14T22:13:20Z sensor-a [sensors] observed=1.25")
    assert "forecast=[1.5]" in out[0] and "model=sensors-000001-ab" in out[0]
    assert out[1].startswith("2023-11-14T22:15:20Z sensor-a")
    assert "ANOMALY" not in out[0]

    raw = vigil("tail", "predictions", "--from-beginning", "--json", "--key", "sensor-b*",
                "--limit", "1")  # fmt: skip
    assert raw.exit_code == 0, raw.output
    assert json.loads(raw.stdout) == json.loads(records[1][1])

    everything = vigil("tail", "predictions", "--from-beginning", "--no-follow")
    assert everything.exit_code == 0, everything.output
    shown = everything.stdout.splitlines()
    assert len(shown) == 4  # partitions interleave: order holds per key only
    assert next(line for line in shown if "ANOMALY" in line).split()[1] == "sensor-b"
    assert [line for line in shown if line.startswith("(not JSON)")] == ["(not JSON) {garbage"]

    letter = DeadLetter.of(
        "out_of_range: |value| 1e+15 exceeds 1e+12", b'{"value": 1e15, "pad": "' + b"x" * 64,
        topic=ops.topics.readings, partition=2, offset=7, key="sensor-a", at=t0,
        code="out_of_range", max_bytes=16,
    )  # fmt: skip
    asyncio.run(
        produce(ops, ops.topics.dead_letters, [(b"sensor-a", letter.model_dump_json().encode())])
    )
    dead = vigil("tail", "dead-letters", "--from-beginning", "--no-follow")
    assert dead.exit_code == 0, dead.output
    (line,) = dead.stdout.splitlines()
    assert f"out_of_range {ops.topics.readings}:2@7 key=sensor-a" in line
    assert "copy truncated, 88 bytes at the source" in line


def test_tail_follows_new_records_until_the_limit(ops: VigilSettings) -> None:
    """Follow mode (the default) starts at the end and prints what arrives afterwards."""
    asyncio.run(produce(ops, ops.topics.alerts, [(b"old", b"{}")]))  # before: never shown
    env = {**os.environ, **cli_env(ops)}
    child = subprocess.Popen(
        [sys.executable, "-m", "vigil.cli", "tail", "alerts", "--limit", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        n = 0
        while child.poll() is None and n < 240:  # keep sending until the follower has two
            alert = Alert(
                alert_id=f"a{n}", key="sensor-z", group="sensors", severity="critical",
                start=1_700_000_000 + n, score=0.9999, recent_values=[1.0, 9.0], forecast=[1.1],
                provenance=Provenance(topic="r", partition=0, offset=n, model_version="m",
                                      vigil_version="t"),
            )  # fmt: skip
            asyncio.run(
                produce(ops, ops.topics.alerts, [(b"sensor-z", alert.model_dump_json().encode())])
            )
            n += 1
            time.sleep(0.25)
        stdout, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 2
    assert all(" FIRING critical sensor-z [sensors] score=0.9999" in line for line in lines)


# ---- vigil state ---------------------------------------------------------------------------------
def stored_state(key: str, values: list[float], t0: float) -> bytes:
    state = KeyState.new(key, GROUPS[0])
    for i, value in enumerate(values):
        state.normalizer.update([value])
        state.last_ts = t0 + 60 * i
        state.events += 1
    state.positions = {"t.readings:1": 41}
    state.incidents.update(0.9999, t0)  # warm-up 0: this opens an incident
    return state_codec.dumps(state)


def test_state_show_and_reset(ops: VigilSettings, redis_client: redis.Redis) -> None:
    prefix = f"vigil:{ops.app_id}"
    t0 = 1_700_000_000.0
    redis_client.set(f"{prefix}:state:sensors:sensor-1", stored_state("sensor-1", [1, 2, 3, 6], t0))
    redis_client.set(f"{prefix}:state:sensors:sensor-2", stored_state("sensor-2", [5, 5], t0))
    redis_client.hset(f"{prefix}:predictions", mapping={"sensor-1": "{}", "sensor-2": "{}"})

    shown = vigil("state", "show", "--key", "sensor-1", "--json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["group"] == "sensors" and data["events"] == 4
    assert data["last_ts"] == t0 + 180 and data["positions"] == {"t.readings:1": 41}
    assert data["normalizer"]["mean"] == [3.0]
    assert data["normalizer"]["std"][0] == pytest.approx(1.8708, rel=1e-4)  # population std
    assert data["incident_open"] is True and data["incident"]["start"] == t0
    line = vigil("state", "show", "--key", "sensor-1").stdout
    assert "sensor-1 [sensors]: 4 events, last 2023-11-14T22:16:20Z" in line and "OPEN" in line
    listing = vigil("state", "show", "--group", "sensors").stdout.splitlines()
    assert sorted(row.split()[0] for row in listing) == ["sensor-1", "sensor-2"]

    declined = vigil("state", "reset", "--key", "sensor-1", input="n\n")
    assert declined.exit_code == 1
    assert redis_client.exists(f"{prefix}:state:sensors:sensor-1")

    done = vigil("state", "reset", "--key", "sensor-1", "--yes")
    assert done.exit_code == 0, done.output
    assert not redis_client.exists(f"{prefix}:state:sensors:sensor-1")
    assert redis_client.hkeys(f"{prefix}:predictions") == [b"sensor-2"]  # its own only
    assert redis_client.exists(f"{prefix}:state:sensors:sensor-2")
    gone = vigil("state", "show", "--key", "sensor-1")
    assert gone.exit_code == 1 and "no stored state for key 'sensor-1'" in gone.output

    whole = vigil("state", "reset", "--group", "sensors", "--yes")
    assert whole.exit_code == 0 and "reset 1 key state(s)" in whole.stdout
    assert not redis_client.exists(f"{prefix}:state:sensors:sensor-2")


# ---- vigil dlq redrive ---------------------------------------------------------------------------
def test_dlq_redrive_sends_each_dead_letter_back_once(ops: VigilSettings) -> None:
    readings = ops.topics.readings
    big = json.dumps({"timestamp": 1_700_000_000, "value": 1e15, "note": "y" * 50_000}).encode()
    sources: list[tuple[bytes | None, bytes]] = [
        (b"sensor-1", json.dumps({"timestamp": 1_700_000_000, "value": 2e13}).encode()),
        (b"sensor-2", big),
        (b"sensor-3", reading(1_600_000_000, 1.0)),
    ]
    sent = asyncio.run(produce(ops, readings, sources))
    now = time.time()

    def letter(i: int, code: str, **kw: object) -> bytes:
        (key, value), meta = sources[i], sent[i]
        return DeadLetter.of(
            f"{code}: test", value, topic=readings, partition=meta.partition, offset=meta.offset,
            key=key, code=code, **kw,  # type: ignore[arg-type]
        ).model_dump_json().encode()  # fmt: skip

    letters = [
        (b"sensor-1", letter(0, "out_of_range", at=now)),
        (b"sensor-2", letter(1, "out_of_range", at=now, max_bytes=1024)),  # a cut copy
        (b"sensor-3", letter(2, "late", at=now - 7200)),
        (
            None,
            DeadLetter.of(
                "not_json: x", b"a,b,c", topic=readings, source="replay", at=now, code="not_json"
            )
            .model_dump_json()
            .encode(),
        ),
    ]
    asyncio.run(produce(ops, ops.topics.dead_letters, letters))
    before = asyncio.run(end_total(ops, readings))

    dry = vigil("dlq", "redrive", "--reason", "out_of_range", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "2 would redrive (1 read back from the source topic" in dry.stdout
    assert asyncio.run(end_total(ops, readings)) == before

    first = vigil("dlq", "redrive", "--reason", "out_of_range")
    assert first.exit_code == 0, first.output
    assert "2 redriven (1 read back" in first.stdout and "0 already redriven" in first.stdout
    everything = asyncio.run(read_topic(ops, readings, count=before + 2, timeout_s=30))
    copies = Counter((r.key, r.value) for r in everything)  # whole originals, sent once more
    assert copies == {sources[0]: 2, sources[1]: 2, sources[2]: 1}

    again = vigil("dlq", "redrive", "--reason", "out_of_range")
    assert again.exit_code == 0, again.output
    assert "0 redriven" in again.stdout and "2 already redriven before" in again.stdout

    recent = vigil("dlq", "redrive", "--since", "1h")  # the late one is two hours old
    assert recent.exit_code == 0 and "0 redriven" in recent.stdout
    assert "1 without a source position" in recent.stdout
    rest = vigil("dlq", "redrive")
    assert rest.exit_code == 0 and "1 redriven" in rest.stdout, rest.output
    assert asyncio.run(end_total(ops, readings)) == before + 3


# ---- vigil models export / import ----------------------------------------------------------------
def test_models_export_then_import_into_another_deployment(
    ops: VigilSettings, redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = GROUPS[0].model
    source = ModelRegistry(redis_client, ops.app_id)
    version = source.register("sensors", build_forecaster(config, seed=3), config,
                              {"candidate_loss": 0.25}, note="trained")  # fmt: skip
    source.promote("sensors", version)
    out = tmp_path / "sensors.vigil-model.zip"

    exported = vigil("models", "export", "sensors", "--out", str(out))
    assert exported.exit_code == 0, exported.output
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["format"] == "vigil-model" and manifest["version"] == version
    assert (
        manifest["config"] == config.model_dump() and manifest["metrics"]["candidate_loss"] == 0.25
    )

    other_app = f"{ops.app_id}-other"
    monkeypatch.setenv("VIGIL_APP_ID", other_app)
    try:
        imported = vigil("models", "import", str(out), "--promote")
        assert imported.exit_code == 0, imported.output
        target = ModelRegistry(redis_client, other_app)
        live = target.live("sensors")
        assert live is not None and "now live" in imported.stdout  # same weights: same id
        info = target.get("sensors", live)
        assert info.metrics["imported_from"] == version and info.config == config
        x = torch.randn(3, config.window, 1)
        a = source.load_model("sensors", version)
        b = target.load_model("sensors", live)
        with torch.no_grad():
            assert torch.equal(a(x), b(x))

        damaged = tmp_path / "damaged.zip"
        with zipfile.ZipFile(out) as src, zipfile.ZipFile(damaged, "w") as dst:
            dst.writestr("manifest.json", src.read("manifest.json"))
            dst.writestr("weights.pt", src.read("weights.pt")[:-10] + b"0123456789")
        refused = vigil("models", "import", str(damaged))
        assert refused.exit_code == 1 and "damaged" in refused.output
    finally:
        names = list(redis_client.scan_iter(match=f"vigil:{other_app}:*", count=1000))
        if names:
            redis_client.delete(*names)


# ---- failures: one line, the address tried, no traceback, no secret ------------------------------
SECRET = "s3cret-passw0rd"


@pytest.mark.parametrize(
    ("args", "service"),
    [
        (["tail", "predictions", "--limit", "1"], "Kafka"),
        (["state", "show", "--key", "k"], "Redis"),
        (["state", "reset", "--key", "k", "--yes"], "Redis"),
        (["dlq", "redrive"], "Redis"),
        (["models", "list"], "Redis"),
        (["models", "export", "default", "--out", "/tmp/never.zip"], "Redis"),
        (["connect", "synthetic", "--keys", "1", "--points", "200", "--no-progress"], "Kafka"),
    ],
)
def test_commands_fail_with_one_line_naming_the_address(args: list[str], service: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")},
        "VIGIL_KAFKA_BOOTSTRAP": "127.0.0.1:9",
        "VIGIL_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:9/0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "vigil.cli", *args], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr and SECRET not in done.stderr + done.stdout
    assert service in lines[0] and "127.0.0.1:9" in lines[0], lines[0]
    if service == "Redis":
        assert "redis://:***@127.0.0.1:9/0" in lines[0]


def test_dlq_redrive_names_kafka_when_only_kafka_is_down(services: VigilSettings) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")},
        "VIGIL_KAFKA_BOOTSTRAP": "127.0.0.1:9",
        "VIGIL_REDIS_URL": services.redis,
    }
    done = subprocess.run(
        [sys.executable, "-m", "vigil.cli", "dlq", "redrive"], env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("cannot use Kafka at 127.0.0.1:9:"), line
