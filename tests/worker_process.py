"""A real `vigil worker` in a subprocess for integration tests (the benchmarks' own runner)."""

from __future__ import annotations

from pathlib import Path

from vigil.bench.worker_subprocess import WorkerSubprocess
from vigil.settings import VigilSettings

WORKER_ARGS = ("-m", "vigil.cli", "worker", "--loglevel", "info")


class WorkerProcess(WorkerSubprocess):
    """One worker whose log lands in the test's temporary folder as ``<name>.log``."""

    def __init__(self, settings: VigilSettings, log_dir: Path, name: str = "worker") -> None:
        super().__init__(settings, log_dir / f"{name}.log", WORKER_ARGS)
