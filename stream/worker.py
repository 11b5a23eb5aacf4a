"""Runs one Faust worker for Vigil's topology (what `vigil worker` and the Kubernetes pods run)."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import torch
from faust import Worker

from vigil.settings import VigilSettings
from vigil.stream.topology import VigilStream
from vigil.topics import ensure_topics


def run_worker(
    settings: VigilSettings, *, loglevel: str = "info", web_port: int | None = None
) -> None:
    """Block until the worker stops (SIGTERM/SIGINT hand partitions over cleanly)."""
    torch.set_num_threads(settings.torch_threads)
    # Fewer, cheaper garbage collections: the per-event objects are short-lived, and a full
    # collection over torch's and Faust's long-lived objects shows up as latency spikes.
    gc.set_threshold(50_000, 20, 100)
    gc.freeze()
    asyncio.run(ensure_topics(settings))
    stream = VigilStream(settings, web_port=web_port)
    logging.getLogger("vigil").setLevel(loglevel.upper())
    worker = _VigilWorker(stream, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()


class _VigilWorker(Worker):
    """Faust's worker, with a bounded wait for the batches being committed when it stops."""

    def __init__(self, stream: VigilStream, **kwargs: Any) -> None:
        self.stream = stream
        super().__init__(stream.app, **kwargs)

    async def on_stop(self) -> None:
        await self.stream.finish_before_stop()  # runs before the app and its consumer stop
        await super().on_stop()
