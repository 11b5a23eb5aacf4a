"""Shared fixtures. Integration tests run against the real local Kafka and Redis, which the
``services`` fixture starts once per session (or uses VIGIL_KAFKA_BOOTSTRAP / VIGIL_REDIS_URL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from vigil import local_services
from vigil.settings import TopicNames, VigilSettings, load_settings

SHARED_DATA = Path(
    os.environ.get(
        "VIGIL_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
).resolve()


# ---- CI: a test that needs Kafka and Redis must run there, never skip -----------------------
_service_tests: set[str] = set()
_skipped_service_tests: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses the services fixture (directly or through another fixture) is a service
    test whether or not it carries the marker."""
    for item in items:
        if "services" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.services)
        if item.get_closest_marker("services") is not None:
            _service_tests.add(item.nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and report.nodeid in _service_tests and not hasattr(report, "wasxfail"):
        _skipped_service_tests.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true a skipped service test fails the run: a green CI must have exercised them."""
    if os.environ.get("CI", "").lower() not in ("true", "1") or not _skipped_service_tests:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["service tests skipped under CI (they must run):", *_skipped_service_tests]
    if reporter is not None:
        reporter.write_line("\n  ".join(lines), red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def services() -> Iterator[VigilSettings]:
    """The real Kafka and Redis, started if needed; left running for the next test run."""
    settings = load_settings()
    local_services.up(settings)
    yield settings


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(services: VigilSettings, run_id: str) -> VigilSettings:
    """Settings with topic names, app id (consumer group, Redis prefix) of this test's own."""
    topics = TopicNames.named(f"t-{run_id}", services.topics.partitions)
    return services.model_copy(update={"app_id": f"vigil-test-{run_id}", "topics": topics})


@pytest.fixture
def redis_client(services: VigilSettings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(services.redis)
    yield client
    client.close()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
