"""A single-node Apache Kafka (KRaft: broker and controller in one JVM) on 127.0.0.1.

The broker's jars come from Maven Central through ``deploy/local/pom.xml`` (``mvn
dependency:copy-dependencies``, cached in ``~/.m2`` and under the local home), storage is
formatted on the first start, and :meth:`LocalKafka.start` returns only once the broker answers
a metadata request. Used by ``vigil up`` and by the test suite; skipped entirely when
``VIGIL_KAFKA_BOOTSTRAP`` points at an existing cluster.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from vigil.settings import VigilSettings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
POM = PROJECT_ROOT / "deploy" / "local" / "pom.xml"
LOG4J_CONFIG = PROJECT_ROOT / "deploy" / "local" / "log4j2.properties"


class LocalServiceError(RuntimeError):
    """A local service could not be installed or started; the message says what to look at."""


@dataclass
class ProcessFile:
    """A pid file for a service started in its own session, so `vigil down` can find it."""

    path: Path

    def read(self) -> int | None:
        try:
            pid = int(self.path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def write(self, pid: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(str(pid))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child not yet reaped) is not a running service.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def stop_process(pid_file: ProcessFile, timeout_s: float = 30.0) -> bool:
    """SIGTERM, wait for a clean exit, then SIGKILL. True if something was running."""
    pid = pid_file.read()
    if pid is None:
        pid_file.clear()
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    pid_file.clear()
    return True


def kafka_uuid() -> str:
    """A cluster id in Kafka's form: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


async def broker_answers(
    bootstrap: str, timeout_s: float = 3.0, options: dict[str, object] | None = None
) -> bool:
    """True when the broker answers a metadata request (``options``: SASL/TLS client options)."""
    from aiokafka.admin import AIOKafkaAdminClient

    # A probe expects refusals while the broker boots; aiokafka would log each one as an error.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **(options or {})
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.list_topics(), timeout_s)
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
        logging.getLogger("aiokafka").setLevel(logging.NOTSET)


class LocalKafka:
    def __init__(self, settings: VigilSettings) -> None:
        self.settings = settings
        local = settings.local
        self.home = local.home.resolve() / "kafka"
        self.libs = local.home.resolve() / f"kafka-{local.kafka_version}" / "libs"
        self.data = self.home / "data"
        self.config = self.home / "server.properties"
        self.log = self.home / "kafka.log"
        self.pid_file = ProcessFile(self.home / "kafka.pid")
        self.bootstrap = settings.local_kafka_bootstrap

    # -- install --------------------------------------------------------------------------
    def fetch(self) -> Path:
        """Copy the broker's jars into the local home once; Maven caches the download."""
        if self.libs.is_dir() and any(self.libs.glob("kafka_2.13-*.jar")):
            return self.libs
        if shutil.which("mvn") is None:
            raise LocalServiceError(
                "Maven (mvn) is needed to fetch Kafka; install it or set VIGIL_KAFKA_BOOTSTRAP"
            )
        partial = self.libs.with_name("libs.partial")
        shutil.rmtree(partial, ignore_errors=True)
        command = [
            "mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-Dkafka.version={self.settings.local.kafka_version}",
            f"-DoutputDirectory={partial}", "-DincludeScope=runtime",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise LocalServiceError(
                f"fetching Kafka {self.settings.local.kafka_version} with Maven failed:\n"
                + (result.stdout + result.stderr)[-3000:]
            )
        partial.rename(self.libs)
        return self.libs

    def _write_config(self) -> None:
        local = self.settings.local
        self.home.mkdir(parents=True, exist_ok=True)
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{local.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{local.kafka_port},CONTROLLER://127.0.0.1:{local.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{local.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data),
            "num.partitions": str(self.settings.topics.partitions),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "24",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        self.config.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))

    def _java(self, main: str, *args: str) -> list[str]:
        heap = os.environ.get("VIGIL_KAFKA_HEAP", "-Xms256m -Xmx768m").split()
        return [
            "java", *heap, "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp", f"{self.libs}/*", main, *args,
        ]  # fmt: skip

    def _format(self) -> None:
        if (self.data / "meta.properties").exists():
            return
        # "=" form: a random id may start with "-", which argparse would take for an option
        cluster_id = f"--cluster-id={kafka_uuid()}"
        command = self._java(
            "kafka.tools.StorageTool", "format", cluster_id, "-c", str(self.config)
        )
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise LocalServiceError(
                "formatting Kafka storage failed:\n" + (result.stdout + result.stderr)[-3000:]
            )

    # -- run ------------------------------------------------------------------------------
    def running(self) -> bool:
        return self.pid_file.read() is not None

    def start(self, timeout_s: float = 90.0) -> bool:
        """Start the broker unless it runs already; True if this call started it."""
        if self.running() and asyncio.run(broker_answers(self.bootstrap)):
            return False
        if asyncio.run(broker_answers(self.bootstrap, timeout_s=1.5)):
            raise LocalServiceError(
                f"something else already answers on {self.bootstrap};"
                " stop it or change VIGIL_LOCAL__KAFKA_PORT"
            )
        if shutil.which("java") is None:
            raise LocalServiceError("Java 17+ is needed for the local Kafka broker")
        self.fetch()
        self._write_config()
        self._format()
        with open(self.log, "ab") as log:
            process = subprocess.Popen(
                self._java("kafka.Kafka", str(self.config)),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives `vigil up` exiting; `vigil down` stops it
            )
        self.pid_file.write(process.pid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_file.clear()
                raise LocalServiceError(
                    f"Kafka exited with {process.returncode}; see {self.log}:\n{self.tail()}"
                )
            if asyncio.run(broker_answers(self.bootstrap)):
                return True
            time.sleep(0.5)
        raise LocalServiceError(
            f"Kafka did not answer on {self.bootstrap} within {timeout_s:.0f}s; see {self.log}"
        )

    def stop(self) -> bool:
        return stop_process(self.pid_file)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""
