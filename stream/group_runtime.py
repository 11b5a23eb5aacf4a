"""One model group at run time: its live model, batch scheduler, trainer and registry watcher.

Threads, not the event loop, do all torch work: the batch scheduler's model thread runs
inference, the trainer thread fine-tunes, the watcher thread loads new live versions. The loop
only hands over arrays and awaits futures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import numpy as np
import redis
import torch
from torch import nn

from vigil.models.batching import BatchRecord, BatchScheduler
from vigil.models.device import select_device
from vigil.models.forecaster import Forecaster, build_forecaster
from vigil.models.inference import InferenceEngine
from vigil.models.registry import LiveModelWatcher, ModelRegistry
from vigil.models.replay import ReplayBuffer
from vigil.models.training import OnlineTrainer, RoundResult
from vigil.records import ModelAnnouncement
from vigil.settings import ModelGroup, VigilSettings
from vigil.stream.metrics import VigilMetrics
from vigil.stream.series_processor import BatchOutput, SeriesProcessor

Announce = Callable[[ModelAnnouncement], Coroutine[Any, Any, None]]

log = logging.getLogger("vigil.group")


class GroupRuntime:
    def __init__(
        self,
        group: ModelGroup,
        settings: VigilSettings,
        metrics: VigilMetrics,
        *,
        announce: Announce | None = None,
    ) -> None:
        self.group = group
        self.settings = settings
        self.metrics = metrics
        self.device = select_device(settings.device)
        self.processor = SeriesProcessor(
            group,
            self.predict,
            lambda: self.version,
            self.step_keys if group.inference == "stateful" else None,
            max_future_s=settings.stream.max_future_s,
        )
        # Stateful steps are tiny and sequential per round: they run on one thread of their own
        # (the batch scheduler's thread serves window mode), never on the event loop.
        self._stepper = ThreadPoolExecutor(
            1,
            thread_name_prefix=f"vigil-step-{group.name}",
            initializer=torch.set_num_threads,  # per OS thread: carry the process's choice
            initargs=(torch.get_num_threads(),),
        )
        self.version = "none"
        self.engine: InferenceEngine | None = None
        self.scheduler: BatchScheduler | None = None
        self.trainer: OnlineTrainer | None = None
        self.watcher: LiveModelWatcher | None = None
        self.registry: ModelRegistry | None = None
        self.buffer: ReplayBuffer | None = None
        self._announce_to = announce  # tells other workers (the model-versions topic)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._steps_reported = 0
        self._started = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.scheduler is not None

    @property
    def queue_depth(self) -> int:
        return self.scheduler.queue_depth if self.scheduler is not None else 0

    # ---- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        model = cast(Forecaster, await asyncio.to_thread(self._load_live_model))
        self.engine = InferenceEngine(model, self.device, version=self.version)
        batch = self.settings.batch
        model_config = self.group.model
        self.scheduler = BatchScheduler(
            self.engine,
            batch,
            window_shape=(model_config.window, model_config.features),
            on_batch=self._on_batch,
            name=self.group.name,
        )
        await self.scheduler.start()
        training = self.group.training
        assert self.registry is not None
        if training.enabled:
            self.buffer = ReplayBuffer(
                training.replay_capacity, training.recent_fraction, training.holdout_size, seed=0
            )
            self.trainer = OnlineTrainer(
                model,
                self.buffer,
                training,
                self._on_promote,
                group=self.group.name,
                on_round=self._on_round,
            )
            self.trainer.start()
        self.watcher = LiveModelWatcher(
            self.registry,
            self.group.name,
            self._on_live_changed,
            known_version=self.version,
            device=self.device,
        )
        self.watcher.start()
        self.metrics.set_live_version(self.group.name, self.version)
        self._started.set()
        log.info("group %s: serving %s on %s", self.group.name, self.version, self.device)

    async def step_keys(
        self, x: np.ndarray, states: list[tuple[bytes, str] | None], windows: np.ndarray
    ) -> tuple[np.ndarray, list[bytes], str]:
        await self._started.wait()
        assert self.engine is not None
        loop = asyncio.get_running_loop()
        self.metrics.batch_size.observe(len(x))
        return await loop.run_in_executor(self._stepper, self.engine.step_keys, x, states, windows)

    async def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.trainer is not None:
            await asyncio.to_thread(self.trainer.stop)
        if self.scheduler is not None:
            await self.scheduler.stop()
        self._stepper.shutdown(wait=True)

    def _load_live_model(self) -> nn.Module:
        """The live version from the registry; a fresh seeded model (registered live) if none."""
        client = redis.Redis.from_url(self.settings.redis)
        self.registry = ModelRegistry(client, self.settings.app_id)
        name = self.group.name
        live = self.registry.live(name)
        if live is not None:
            self.version = live
            return self.registry.load_model(name, live, self.device)
        model = build_forecaster(self.group.model, seed=0)
        version = self.registry.register(
            name, model, self.group.model, {}, note="initial (untrained)"
        )
        self.registry.promote(name, version, "first start")
        self.version = self.registry.live(name) or version
        if self.version != version:  # another worker won the race: serve its model
            return self.registry.load_model(name, self.version, self.device)
        return model.to(self.device).eval()

    # ---- inference ----------------------------------------------------------------------
    async def predict(self, windows: np.ndarray) -> np.ndarray:
        await self._started.wait()  # agents may get events before the model has loaded
        assert self.scheduler is not None
        return await self.scheduler.submit_many(windows)

    def _on_batch(self, record: BatchRecord) -> None:
        """Model thread: one forward pass done."""
        self.metrics.batch_size.observe(record.size)
        self.metrics.inference_seconds.observe(record.run_seconds)

    # ---- training -----------------------------------------------------------------------
    def _on_round(self, result: RoundResult) -> None:
        """Trainer thread: one round done (promoted, rejected or skipped)."""
        if result.status != "skipped":
            self.metrics.training_round_seconds.observe(result.duration_s)
        if result.status == "rejected":
            self.metrics.promotions.labels(self.group.name, f"rejected:{result.reason}").inc()

    def learn(self, output: BatchOutput) -> None:
        """Feed admitted examples to the replay buffer and wake the trainer (never blocks)."""
        if self.trainer is None or self.buffer is None:
            return
        for example in output.examples:
            self.buffer.add(example.window, example.target)
        if output.lr_scale is not None:
            self.trainer.set_lr_scale(output.lr_scale)
        if output.examples:
            self.trainer.notify()
        steps = self.trainer.stats.steps
        if steps > self._steps_reported:
            self.metrics.training_steps.labels(self.group.name).inc(steps - self._steps_reported)
            self._steps_reported = steps

    def set_training_share(self, share_of_ceiling: Callable[[float], float]) -> None:
        """Let the worker's headroom set the trainer's CPU share (its setting is the ceiling)."""
        if self.trainer is not None:
            self.trainer.set_cpu_share(share_of_ceiling(self.group.training.cpu_share))

    def _on_promote(self, candidate: nn.Module, metrics: dict[str, Any]) -> None:
        """Trainer thread: register the winner, make it live, serve it, tell the other workers."""
        assert self.registry is not None and self.engine is not None
        version = self.registry.register(
            self.group.name,
            candidate,
            self.group.model,
            metrics,
            parent=self.version,
            note="online fine-tuning",
        )
        if self.watcher is not None:  # before promote, so our own announcement is not reloaded
            self.watcher.acknowledge(version)
        self.registry.promote(self.group.name, version, "shadow evaluation won")
        self._serve(version, candidate)
        self.metrics.promotions.labels(self.group.name, "promoted").inc()
        self._announce(version, "online fine-tuning")

    def _on_live_changed(self, version: str, model: nn.Module) -> None:
        """Watcher thread: another worker promoted, or someone rolled back from the CLI."""
        if self.trainer is not None:
            self.trainer.set_live(model)
        self._serve(version, model)

    def _serve(self, version: str, model: nn.Module) -> None:
        assert self.engine is not None
        self.engine.swap(cast(Forecaster, model), version=version)
        self.version = version
        self.metrics.set_live_version(self.group.name, version)

    def _announce(self, version: str, reason: str) -> None:
        announce, loop = self._announce_to, self._loop
        if announce is None or loop is None:
            return
        announcement = ModelAnnouncement(
            group=self.group.name, version=version, at=time.time(), reason=reason
        )
        asyncio.run_coroutine_threadsafe(announce(announcement), loop)
