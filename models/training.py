"""Online fine-tuning in rounds, with a shadow evaluation and a guard before anything goes live.

A round copies the live model into a candidate, takes a few small optimiser steps on batches from
the replay buffer, and then scores candidate and live model on the held-back slice of the buffer.
The candidate replaces the live model only if it is clearly better
(``candidate_loss < live_loss * (1 - promote_margin)``). Anything suspicious — a NaN or Inf in a
loss or in the weights, or a loss that blows up during the round — throws the candidate away;
the live model is never touched by training, so the last good version simply stays.

Why a thread and not a process: PyTorch releases the GIL inside its kernels, so a training
thread runs alongside the inference thread and the event loop on the other cores; the live
model's weights are shared in memory, so taking a candidate is one ``deepcopy`` and handing a
promoted one back is passing a reference. A separate process would have to ship the weights both
ways every round (serialise, copy, deserialise) and keep a second copy of the replay buffer.
The candidate is a private deep copy, so inference never sees half-updated weights.

``torch.set_num_threads`` is process-wide and belongs to the worker, so it is left alone here.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from vigil.models.config import TrainingConfig
from vigil.models.replay import ReplayBuffer

log = logging.getLogger(__name__)

PromoteCallback = Callable[[nn.Module, dict[str, Any]], None]
RoundCallback = Callable[["RoundResult"], None]

# Rejection reasons (also the keys of ``TrainerStats.rejections``).
NOT_ENOUGH_EXAMPLES = "not_enough_examples"
NONFINITE_LOSS = "nonfinite_loss"
NONFINITE_WEIGHTS = "nonfinite_weights"
DIVERGED = "diverged"
NO_IMPROVEMENT = "no_improvement"
LIVE_CHANGED = "live_changed"
PROMOTE_FAILED = "promote_failed"
STOPPED = "stopped"
ERROR = "error"


@dataclass(frozen=True)
class RoundResult:
    """What one round did. ``status`` is ``promoted``, ``rejected`` or ``skipped`` (not enough
    data yet, not counted as a rejection); ``reason`` says why it was not promoted."""

    status: Literal["promoted", "rejected", "skipped"]
    reason: str = ""
    steps: int = 0
    train_loss: float | None = None  # mean batch loss over the round's steps
    candidate_loss: float | None = None  # on the holdout
    live_loss: float | None = None  # on the same holdout
    lr: float = 0.0
    examples: int = 0  # buffer.added when the round started
    duration_s: float = 0.0

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"

    def metrics(self) -> dict[str, Any]:
        """JSON-able figures handed to ``on_promote`` and stored with a registry version."""
        return {
            "candidate_loss": _finite_or_none(self.candidate_loss),
            "live_loss": _finite_or_none(self.live_loss),
            "train_loss": _finite_or_none(self.train_loss),
            "steps": self.steps,
            "lr": self.lr,
            "examples": self.examples,
            "duration_s": round(self.duration_s, 4),
        }


@dataclass
class TrainerStats:
    """Counters since the trainer was built (a snapshot; safe to read from any thread)."""

    steps: int = 0
    rounds: int = 0
    promotions: int = 0
    skipped: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    last: RoundResult | None = None


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class OnlineTrainer:
    """Fine-tunes one model group's live model in guarded rounds.

    ``run_round()`` is synchronous (tests and benchmarks call it directly); ``start()`` runs
    rounds on a daemon thread, woken by ``notify()`` and running once ``new_examples_per_round``
    examples arrived since the last round (and at least ``min_interval_s`` after it).
    ``on_promote(candidate, metrics)`` is called on the trainer thread for a winning candidate;
    once it returns, the candidate is the trainer's live model. If it raises, the round counts
    as rejected (``promote_failed``) and the old live model stays.
    """

    def __init__(
        self,
        model: nn.Module,
        buffer: ReplayBuffer,
        config: TrainingConfig,
        on_promote: PromoteCallback | None = None,
        *,
        group: str = "default",
        divergence_factor: float = 10.0,
        new_examples_per_round: int | None = None,
        min_interval_s: float = 0.5,
        idle_check_s: float = 5.0,
        on_round: RoundCallback | None = None,
    ) -> None:
        if divergence_factor <= 1.0:
            raise ValueError(f"divergence_factor must be above 1, got {divergence_factor}")
        self.buffer = buffer
        self.config = config
        self.group = group
        self.divergence_factor = divergence_factor
        self.new_examples_per_round = max(1, new_examples_per_round or config.batch_size)
        self.min_interval_s = min_interval_s
        self.idle_check_s = idle_check_s
        self._on_promote = on_promote
        self._on_round = on_round
        self._live = model
        self._lr_scale = 1.0
        self._lock = threading.Lock()  # guards live reference, lr scale and counters
        self._round_lock = threading.Lock()  # one round at a time (thread vs a direct call)
        self._stats = TrainerStats()
        self._rejections: Counter[str] = Counter()
        self._examples_at_last_round = -1
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- controls from other threads ------------------------------------------------------
    @property
    def live_model(self) -> nn.Module:
        with self._lock:
            return self._live

    def set_live(self, model: nn.Module) -> None:
        """Replace the model candidates are copied from (e.g. after a registry rollback).
        A round already running against the old live model is then rejected (``live_changed``)."""
        with self._lock:
            self._live = model

    def set_lr_scale(self, scale: float) -> None:
        """Multiply the learning rate (the drift monitor raises it after a regime change and
        sets it back to 1 later); takes effect at the next optimiser step."""
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"lr scale must be a positive finite number, got {scale}")
        with self._lock:
            self._lr_scale = float(scale)

    @property
    def lr_scale(self) -> float:
        with self._lock:
            return self._lr_scale

    @property
    def lr(self) -> float:
        """The learning rate the next optimiser step uses."""
        return self.config.learning_rate * self.lr_scale

    @property
    def stats(self) -> TrainerStats:
        """A snapshot of the counters (a fresh object per read)."""
        with self._lock:
            return TrainerStats(
                steps=self._stats.steps,
                rounds=self._stats.rounds,
                promotions=self._stats.promotions,
                skipped=self._stats.skipped,
                rejections=dict(self._rejections),
                last=self._stats.last,
            )

    # ---- one round ------------------------------------------------------------------------
    def ready(self) -> bool:
        """Enough data for a round: ``min_examples`` stored, a full holdout, trainable examples."""
        buffer = self.buffer
        return (
            len(buffer) >= self.config.min_examples
            and buffer.holdout_count >= buffer.holdout_size
            and buffer.trainable > 0
        )

    def run_round(self, pace: Callable[[], None] | None = None) -> RoundResult:
        """Train a candidate, evaluate it against the live model, promote or discard it.

        ``pace`` is called after every optimiser step and after the evaluation (the thread
        passes its :class:`CpuBudget`; a direct call runs flat out)."""
        with self._round_lock:
            started = time.perf_counter()
            examples = self.buffer.added
            if not self.ready():
                result = RoundResult("skipped", NOT_ENOUGH_EXAMPLES, examples=examples)
                self._record(result)
                return result
            self._examples_at_last_round = examples
            live = self.live_model
            progress: dict[str, Any] = {"steps": 0, "losses": [], "lr": self.lr}
            try:
                candidate, live_loss, candidate_loss = self._train_and_evaluate(
                    live, progress, pace or _no_pause
                )
                self._judge(live, live_loss, candidate_loss)
                result = RoundResult(
                    "promoted",
                    steps=progress["steps"],
                    train_loss=_mean(progress["losses"]),
                    candidate_loss=candidate_loss,
                    live_loss=live_loss,
                    lr=progress["lr"],
                    examples=examples,
                    duration_s=time.perf_counter() - started,
                )
                self._promote(live, candidate, result)
            except _Rejected as rejected:
                log.info("group %s: candidate rejected (%s)", self.group, rejected)
                result = RoundResult(
                    "rejected",
                    rejected.reason,
                    steps=progress["steps"],
                    train_loss=_mean(progress["losses"]),
                    candidate_loss=progress.get("candidate_loss"),
                    live_loss=progress.get("live_loss"),
                    lr=progress["lr"],
                    examples=examples,
                    duration_s=time.perf_counter() - started,
                )
            self._record(result)
            return result

    def _train_and_evaluate(
        self, live: nn.Module, progress: dict[str, Any], pace: Callable[[], None]
    ) -> tuple[nn.Module, float, float]:
        cfg = self.config
        # Two private copies: the candidate to train and a frozen baseline to score, so the
        # live object itself is only ever read (no .train()/.eval() flips under inference).
        candidate = copy.deepcopy(live)
        baseline = copy.deepcopy(live)
        device = _device_of(candidate)
        candidate.train()
        optimiser = torch.optim.Adam(
            candidate.parameters(), lr=self.lr, weight_decay=cfg.weight_decay
        )
        first: float | None = None
        smoothed = 0.0
        for _ in range(cfg.steps_per_round):
            if self._stop.is_set():
                raise _Rejected(STOPPED)
            lr = self.lr
            for group in optimiser.param_groups:
                group["lr"] = lr
            progress["lr"] = lr
            x, y = self.buffer.sample(cfg.batch_size)
            loss = functional.mse_loss(candidate(_tensor(x, device)), _tensor(y, device))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise _Rejected(NONFINITE_LOSS, f"step {progress['steps'] + 1}")
            progress["losses"].append(value)
            if first is None:
                first = smoothed = value
            smoothed = 0.5 * smoothed + 0.5 * value  # batch losses are noisy; judge the trend
            if smoothed > self.divergence_factor * max(first, 1e-12):
                raise _Rejected(DIVERGED, f"loss {smoothed:.4g} vs {first:.4g} at round start")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(candidate.parameters(), cfg.grad_clip)
            optimiser.step()
            progress["steps"] += 1
            with self._lock:
                self._stats.steps += 1
            pace()
        if not _weights_finite(candidate):
            raise _Rejected(NONFINITE_WEIGHTS)

        # The holdout is read only now: its examples have never been outside it, so none of
        # them can have been in a training batch of this or any earlier round.
        hx, hy = self.buffer.holdout()
        live_loss = _evaluate(baseline, hx, hy, device)
        candidate_loss = _evaluate(candidate, hx, hy, device)
        pace()
        progress["live_loss"], progress["candidate_loss"] = live_loss, candidate_loss
        if not math.isfinite(candidate_loss):
            raise _Rejected(NONFINITE_LOSS, "on the holdout")
        return candidate, live_loss, candidate_loss

    def _judge(self, live: nn.Module, live_loss: float, candidate_loss: float) -> None:
        """Raise _Rejected unless the candidate clearly beats the live model."""
        if math.isfinite(live_loss) and candidate_loss > self.divergence_factor * live_loss:
            raise _Rejected(DIVERGED, f"holdout loss {candidate_loss:.4g} vs live {live_loss:.4g}")
        # A non-finite live loss means the live model is broken: any finite candidate wins.
        if math.isfinite(live_loss) and not (
            candidate_loss < live_loss * (1.0 - self.config.promote_margin)
        ):
            raise _Rejected(
                NO_IMPROVEMENT, f"holdout loss {candidate_loss:.4g} vs live {live_loss:.4g}"
            )
        if self.live_model is not live:
            raise _Rejected(LIVE_CHANGED, "the live model was replaced during the round")

    def _promote(self, live: nn.Module, candidate: nn.Module, result: RoundResult) -> None:
        candidate.eval()  # it will serve inference from now on
        if self._on_promote is not None:
            try:
                self._on_promote(candidate, result.metrics())
            except Exception as exc:
                log.exception("group %s: on_promote failed; keeping the live model", self.group)
                raise _Rejected(PROMOTE_FAILED, repr(exc)) from exc
        with self._lock:
            if self._live is live:
                self._live = candidate

    def _record(self, result: RoundResult) -> None:
        with self._lock:
            self._stats.last = result
            if result.status == "skipped":
                self._stats.skipped += 1
            else:
                self._stats.rounds += 1
                if result.promoted:
                    self._stats.promotions += 1
                else:
                    self._rejections[result.reason] += 1
        if self._on_round is not None:
            try:
                self._on_round(result)
            except Exception:
                log.exception("group %s: on_round callback failed", self.group)

    # ---- background thread ----------------------------------------------------------------
    def notify(self) -> None:
        """Cheap, non-blocking: tell the trainer thread new examples arrived."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._threads = torch.get_num_threads()  # per OS thread in OpenMP: carried over in _run
        self._thread = threading.Thread(
            target=self._run, name=f"vigil-trainer-{self.group}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread; a round in progress ends at its next step (rejected as ``stopped``)."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("group %s: trainer thread did not stop in %.0fs", self.group, timeout)

    def set_cpu_share(self, share: float) -> None:
        """Lower (or restore) the trainer's share while the worker is busy; at most the
        configured ``cpu_share``."""
        budget = getattr(self, "budget", None)
        if budget is not None:
            budget.share = min(self.config.cpu_share, max(1e-3, share))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _due(self) -> bool:
        if self._examples_at_last_round < 0:
            return self.ready()
        fresh = self.buffer.added - self._examples_at_last_round
        return fresh >= self.new_examples_per_round and self.ready()

    def _run(self) -> None:
        torch.set_num_threads(self._threads)
        budget = self.budget = CpuBudget(self.config.cpu_share, self._stop.wait)
        last_round = -math.inf
        while not self._stop.is_set():
            self._wake.wait(self.idle_check_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            wait = last_round + self.min_interval_s - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            if not self._due():
                continue
            try:
                budget.start()
                self.run_round(budget.rest)
            except Exception:
                log.exception("group %s: training round failed", self.group)
                with self._lock:
                    self._stats.rounds += 1
                    self._rejections[ERROR] += 1
            last_round = time.monotonic()
            self._wake.set()  # more may have arrived during the round: check again


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


class CpuBudget:
    """Keeps a thread computing at most ``share`` of wall time: after each slice of work it
    rests until work / (work + rest) is down to ``share``.

    Wall time, not CPU time, is measured on purpose: when the machine is busy a slice takes
    longer, so the trainer rests longer and leaves the cores to inference. One rest lasts at most
    ``max_rest_s``: a one-off slow slice (the first step builds its kernels, about a second)
    would otherwise stall learning for several seconds. ``sleep(seconds)`` returns True to end
    a rest early (the trainer's stop event).
    """

    def __init__(
        self, share: float, sleep: Callable[[float], bool] = _sleep, *, max_rest_s: float = 1.0
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"cpu share must be in (0, 1], got {share}")
        self.share = share
        self.sleep = sleep
        self.max_rest_s = max_rest_s
        self.rested = 0.0  # seconds spent resting, in all
        self._mark = time.perf_counter()

    def start(self) -> None:
        """A new stretch of work begins now (time since the last rest is not counted)."""
        self._mark = time.perf_counter()

    def rest(self) -> None:
        worked = time.perf_counter() - self._mark
        pause = min(worked * (1.0 / self.share - 1.0), self.max_rest_s)
        if pause > 0:
            self.rested += pause
            self.sleep(pause)
        self._mark = time.perf_counter()


def _no_pause() -> None:
    return None


def _tensor(array: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(array).to(device)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _weights_finite(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


@torch.no_grad()
def _evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device) -> float:
    model.eval()
    return float(functional.mse_loss(model(_tensor(x, device)), _tensor(y, device)))


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
