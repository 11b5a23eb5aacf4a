"""Under CI=true a skipped service test fails the run (tests/conftest.py): a green CI must mean
that Kafka, Redis and Mosquitto were really exercised, not that their tests quietly skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")

SKIPPING_TESTS = """
import pytest


@pytest.fixture
def services():
    pytest.skip("pretend the broker is missing")


@pytest.mark.services
def test_marked():
    pytest.skip("pretend mosquitto is missing")


def test_through_a_fixture(redis_client):  # needs services through the conftest's fixture
    pass


def test_plain_skip():
    pytest.skip("not a service test: allowed")


def test_passes():
    pass
"""


def run_pytest(folder: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(folder),
         "-W", "ignore::pytest.PytestUnknownMarkWarning", str(folder)],
        env=env, cwd=folder, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_skipped_service_test_fails_the_run_under_ci_only(tmp_path: Path) -> None:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_skipping.py").write_text(SKIPPING_TESTS)

    under_ci = run_pytest(tmp_path, "true")
    assert under_ci.returncode == 1, under_ci.stdout
    assert "service tests skipped under CI" in under_ci.stdout
    assert "test_skipping.py::test_marked" in under_ci.stdout
    assert "test_skipping.py::test_through_a_fixture" in under_ci.stdout
    assert "test_skipping.py::test_plain_skip" not in under_ci.stdout.split("under CI")[1]

    locally = run_pytest(tmp_path, None)
    assert locally.returncode == 0, locally.stdout
    assert "1 passed, 3 skipped" in locally.stdout
