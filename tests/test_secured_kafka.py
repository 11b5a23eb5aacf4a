"""Vigil on a secured Kafka: a second local broker (Kafka 4.1.1, the jars `vigil up` fetched) that
only speaks SASL_SSL with SCRAM-SHA-512 and a certificate from a CA made here. `vigil up`-style
topic creation, a real worker and a producer go through it and predictions come out; a client
without the security settings gets nothing from that broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kafka_io import reading
from tests.worker_process import WorkerProcess
from vigil.bench.worker_subprocess import free_port
from vigil.connectors.producer import RecordProducer, kafka_client_options
from vigil.local_kafka import LocalKafka, broker_answers, kafka_uuid
from vigil.records import Reading
from vigil.settings import (
    BatchConfig,
    DetectorConfig,
    ModelConfig,
    ModelGroup,
    TrainingConfig,
    VigilSettings,
)

pytestmark = pytest.mark.services

USER, PASSWORD = "vigil-worker", "scram-Secret-42"
ADMIN, ADMIN_PASSWORD = "admin", "admin-Secret-42"
STORE_PASSWORD = "store-Secret-42"
WINDOW = 6


def run(*command: str, cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}\n{done.stderr}"


def make_certificates(folder: Path) -> tuple[Path, Path]:
    """A self-signed CA (PEM, what clients trust) and the broker's PKCS12 keystore."""
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
        "-out", "ca.pem", "-days", "2", "-subj", "/CN=vigil-test-ca", cwd=folder)  # fmt: skip
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key",
        "-out", "broker.csr", "-subj", "/CN=127.0.0.1", cwd=folder)  # fmt: skip
    (folder / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    run("openssl", "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "broker.pem", "-days", "2", "-extfile", "ext.cnf",
        cwd=folder)  # fmt: skip
    # keytool builds the keystore the JVM reads best (a PKCS12 written by Java itself)
    run("openssl", "pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key",
        "-certfile", "ca.pem", "-name", "broker", "-out", "broker-openssl.p12",
        "-passout", f"pass:{STORE_PASSWORD}", cwd=folder)  # fmt: skip
    run("keytool", "-importkeystore", "-srckeystore", "broker-openssl.p12", "-srcstoretype",
        "PKCS12", "-srcstorepass", STORE_PASSWORD, "-destkeystore", "broker.p12",
        "-deststoretype", "PKCS12", "-deststorepass", STORE_PASSWORD, "-noprompt",
        cwd=folder)  # fmt: skip
    return folder / "ca.pem", folder / "broker.p12"


class SecuredKafka:
    """One KRaft node whose only client listener is SASL_SSL (SCRAM-SHA-512)."""

    def __init__(self, libs: Path, home: Path) -> None:
        self.libs, self.home = libs, home
        self.port, self.controller_port = free_port(), free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = home / "kafka.log"

    def java(self, main: str, *args: str) -> list[str]:
        return ["java", "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
                "-cp", f"{self.libs}/*", main, *args]  # fmt: skip

    def configure(self, ca: Path, keystore: Path) -> Path:
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required"
            f' username="{ADMIN}" password="{ADMIN_PASSWORD}";'
        )
        config = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"SASL_SSL://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(keystore),
            "ssl.keystore.password": STORE_PASSWORD,
            "ssl.key.password": STORE_PASSWORD,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(ca),
            "log.dirs": str(self.home / "data"),
            "num.partitions": "2",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
        }
        path = self.home / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in config.items()))
        return path

    def start(self, ca: Path, keystore: Path) -> None:
        config = self.configure(ca, keystore)
        # SCRAM users exist before the first start (the broker itself logs in as ADMIN)
        run(*self.java(
            "kafka.tools.StorageTool", "format", f"--cluster-id={kafka_uuid()}", "-c", str(config),
            "--add-scram", f"SCRAM-SHA-512=[name={ADMIN},password={ADMIN_PASSWORD}]",
            "--add-scram", f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]",
        ), cwd=self.home)  # fmt: skip
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.java("kafka.Kafka", str(config)), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def wait(self, options: dict[str, object], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"secured Kafka exited:\n{self.log.read_text()[-3000:]}")
            if asyncio.run(broker_answers(self.bootstrap, options=options)):
                return
            time.sleep(0.5)
        pytest.fail(f"secured Kafka not up in {timeout_s}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # a throwaway broker: no clean shutdown needed
            self.process.wait(30)


@pytest.fixture
def secured(
    services: VigilSettings, tmp_path: Path, run_id: str
) -> Iterator[tuple[SecuredKafka, VigilSettings]]:
    libs = LocalKafka(services).fetch()  # the jars `vigil up` already has (Maven cache)
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, keystore = make_certificates(certs)
    broker = SecuredKafka(libs, tmp_path / "kafka")
    broker.home.mkdir()
    groups = [
        ModelGroup(
            name="sensors",
            model=ModelConfig(hidden_size=8, num_layers=1, window=WINDOW, horizon=1),
            training=TrainingConfig(enabled=False),
            detector=DetectorConfig(warmup_events=4),
        )
    ]
    base = services.model_copy(
        update={"groups": groups, "batch": BatchConfig(max_size=32, max_wait_ms=5)}
    )
    topics = base.topics.model_copy(
        update={
            name: f"s-{run_id}.{name.replace('_', '-')}"
            for name in (
                "readings",
                "predictions",
                "alerts",
                "dead_letters",
                "model_versions",
                "drift",
            )
        }
        | {"partitions": 2, "replication_factor": 1}
    )
    settings = VigilSettings.model_validate(
        {
            **base.model_dump(),
            "app_id": f"vigil-sasl-{run_id}",
            "topics": topics.model_dump(),
            "kafka_bootstrap": broker.bootstrap,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": USER,
            "kafka_sasl_password": PASSWORD,
            "kafka_ssl_cafile": str(ca),
            "redis_url": services.redis,
        }
    )
    broker.start(ca, keystore)
    try:
        broker.wait(kafka_client_options(settings))
        yield broker, settings
    finally:
        broker.stop()


def security_env(settings: VigilSettings) -> dict[str, str]:
    assert settings.kafka_sasl_password is not None
    return {
        "VIGIL_KAFKA_BOOTSTRAP": settings.bootstrap,
        "VIGIL_KAFKA_SECURITY_PROTOCOL": settings.kafka_security_protocol,
        "VIGIL_KAFKA_SASL_MECHANISM": str(settings.kafka_sasl_mechanism),
        "VIGIL_KAFKA_SASL_USERNAME": str(settings.kafka_sasl_username),
        "VIGIL_KAFKA_SASL_PASSWORD": settings.kafka_sasl_password.get_secret_value(),
        "VIGIL_KAFKA_SSL_CAFILE": str(settings.kafka_ssl_cafile),
    }


async def read_predictions(settings: VigilSettings, count: int, timeout_s: float) -> list[dict]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.topics.predictions, bootstrap_servers=settings.bootstrap, group_id=None,
        auto_offset_reset="earliest", **kafka_client_options(settings),
    )  # fmt: skip
    await consumer.start()
    found: list[dict] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(found) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                found.extend(json.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return found


def test_worker_and_producer_work_through_sasl_ssl(
    secured: tuple[SecuredKafka, VigilSettings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, settings = secured
    # the broker really is secured: a client without the settings gets no answer
    assert not asyncio.run(broker_answers(broker.bootstrap, timeout_s=3.0))

    env = {
        **os.environ,
        **security_env(settings),
        "VIGIL_REDIS_URL": settings.redis,
        "VIGIL_APP_ID": settings.app_id,
        "VIGIL_TOPICS": settings.topics.model_dump_json(),
    }
    up = subprocess.run([sys.executable, "-m", "vigil.cli", "up"], env=env, capture_output=True,
                        text=True, timeout=120)  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"kafka  {broker.bootstrap}" in up.stdout and "external" in up.stdout
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() not in up.stdout + up.stderr
    status = subprocess.run([sys.executable, "-m", "vigil.cli", "status"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert status.returncode == 0, status.stdout + status.stderr

    for name, value in security_env(settings).items():  # the worker process inherits these
        monkeypatch.setenv(name, value)
    worker = WorkerProcess(settings, tmp_path, "secured-worker").start()
    try:
        worker.wait_ready(timeout_s=90)
        keys, n = ["sensor-a", "sensor-b"], 12

        async def send() -> None:
            async with RecordProducer(settings) as producer:
                for i in range(n):
                    for k, key in enumerate(keys):
                        value = json.loads(reading(1_700_000_000 + 60 * i, 10.0 * (k + 1) + i % 3))
                        await producer.send_reading(key, Reading.model_validate(value))
                await producer.flush()

        asyncio.run(send())
        expected = len(keys) * (n - WINDOW + 1)
        predictions = asyncio.run(read_predictions(settings, expected, timeout_s=60))
    finally:
        worker.stop()
    assert len(predictions) == expected, worker.log_tail()
    assert {p["key"] for p in predictions} == set(keys)
    assert all(p["provenance"]["topic"] == settings.topics.readings for p in predictions)
