"""Replay a recorded series through the stream's own logic, without Kafka: what is evaluated is
what is deployed.

:class:`ReplayHarness` wires one model group the way
:class:`vigil.stream.group_runtime.GroupRuntime` does and feeds readings to
:meth:`vigil.stream.series_processor.SeriesProcessor.process`, the very method the Faust agent
calls. Same model (``build_forecaster(group.model, seed)``), same
:class:`~models.inference.InferenceEngine`, same per-key :class:`~stream.key_state.KeyState`
(normaliser, window, scorer, incidents, conformal intervals, drift, training admission), same
:class:`~models.replay.ReplayBuffer` and :class:`~models.training.OnlineTrainer` with its shadow
evaluation, and a promoted candidate is swapped into the engine as ``_on_promote`` does.

What differs from the live stream, and why:

* **Training runs in the caller's thread, between chunks.** The live trainer thread runs a round
  when ``new_examples_per_round`` examples arrived and it is free, so how often the model
  changes depends on wall-clock speed. Here a round runs after every ``round_every`` new
  examples (default ``training.batch_size``, the live trainer's own ``new_examples_per_round``),
  checked after each chunk, so a replay is deterministic and independent of machine speed.
* **Inference calls** ``engine.predict`` **directly**, not through the ``BatchScheduler``: the
  scheduler only gathers requests from many agents into one forward pass, and the processor
  already sends all windows of a chunk in one call. The harness's private event loop serves
  nothing else, so running torch on it blocks nobody.
* **No registry, no Kafka, no Redis**: versions are the weights' digests, outputs are returned.
* **One torch thread** while the harness works (``threads``): these models are too small to
  gain from intra-op threads, and two processes share two cores in ``vigil eval nab``.

No look-ahead: events go in time order, in chunks of ``chunk_size``. Within a chunk every
forecast comes from a window of earlier rows and from the model as it was before the chunk;
training examples of a chunk reach the trainer only after the whole chunk is scored. So the
outputs for row ``t`` depend on rows ``<= t`` only (``tests/test_replay_harness.py`` checks it
by perturbing the rows after ``t``).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from vigil.models.device import DevicePreference, select_device
from vigil.models.forecaster import Forecaster, build_forecaster
from vigil.models.inference import InferenceEngine
from vigil.models.replay import ReplayBuffer
from vigil.models.training import OnlineTrainer, RoundResult
from vigil.records import Alert, Reading
from vigil.settings import ModelGroup
from vigil.stream.key_state import KeyState
from vigil.stream.series_processor import BatchOutput, SeriesProcessor
from vigil.stream.validation import InputEvent

__all__ = [
    "DEFAULT_CHUNK",
    "REPLAY_TOPIC",
    "ReplayHarness",
    "ReplayResult",
    "TrainingSummary",
    "VigilDetector",
    "VigilForecaster",
    "forecast_group",
    "nab_group",
]

DEFAULT_CHUNK = 256  # events per SeriesProcessor.process call: one forward pass each
REPLAY_TOPIC = "replay"

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TrainingSummary:
    """What online training did during the replay."""

    rounds: int = 0
    promotions: int = 0
    steps: int = 0
    examples: int = 0
    rejections: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplayResult:
    """Per input row, what the stream published for it (NaN / False where it published nothing:
    the key's window was still filling, or the row was rejected, see ``rejected``).

    ``forecasts[t, h]`` is the forecast of the value ``h + 1`` rows after row ``t`` made when row
    ``t`` arrived (raw units, first channel), ``lower`` / ``upper`` its conformal interval.
    """

    scores: FloatArray  # [N]
    anomaly: npt.NDArray[np.bool_]  # [N]
    forecasts: FloatArray  # [N, H]
    lower: FloatArray  # [N, H]
    upper: FloatArray  # [N, H]
    rejected: dict[int, str]  # row -> rejection code (duplicate, late, shape, ...)
    alerts: list[Alert]
    versions: list[str]  # model version that served each chunk, in order
    training: TrainingSummary  # since the harness was built
    # row -> missing steps the stream filled (gap policy) before it: rows after a time gap
    filled: dict[int, int] = field(default_factory=dict)


class ReplayHarness:
    """One model group replayed offline through :class:`SeriesProcessor` (see module doc).

    A harness keeps its model, trainer and key states between calls, so several calls to
    :meth:`replay` continue one stream (row numbers and offsets carry on).
    """

    def __init__(
        self,
        group: ModelGroup,
        *,
        train: bool = True,
        seed: int = 0,
        device: DevicePreference = "cpu",
        chunk_size: int = DEFAULT_CHUNK,
        round_every: int | None = None,
        threads: int | None = 1,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if round_every is not None and round_every < 1:
            raise ValueError(f"round_every must be at least 1, got {round_every}")
        self.group = group
        self.chunk_size = chunk_size
        self.threads = threads
        self.device = select_device(device)
        # As GroupRuntime._load_live_model for a group with no live version yet.
        model = build_forecaster(group.model, seed).to(self.device).eval()
        self.engine = InferenceEngine(model, self.device)
        self.processor = SeriesProcessor(group, self._predict, lambda: self.engine.version)
        self.states: dict[str, KeyState] = {}
        training = group.training
        self.round_every = round_every or training.batch_size
        self.buffer: ReplayBuffer | None = None
        self.trainer: OnlineTrainer | None = None
        if train and training.enabled:
            # As GroupRuntime.start: the trainer takes the model the engine copied.
            self.buffer = ReplayBuffer(
                training.replay_capacity, training.recent_fraction, training.holdout_size, seed=seed
            )
            self.trainer = OnlineTrainer(
                model, self.buffer, training, self._on_promote, group=group.name
            )
        self._offset = 0
        self._at_last_round = 0
        # A private loop, reused: asyncio.run() per chunk would, on Python 3.11, repr the whole
        # BatchOutput when it restores the SIGINT handler (seconds per chunk of numpy arrays).
        self._loop = asyncio.new_event_loop()
        weakref.finalize(self, self._loop.close)

    # ---- the stream's hooks --------------------------------------------------------------
    async def _predict(self, windows: np.ndarray) -> np.ndarray:
        return self.engine.predict(windows)

    def _on_promote(self, candidate: nn.Module, metrics: dict[str, Any]) -> None:
        """As GroupRuntime._on_promote, minus the registry: the winner serves from now on."""
        assert isinstance(candidate, Forecaster)
        self.engine.swap(candidate)

    def _learn(self, output: BatchOutput) -> list[RoundResult]:
        """As GroupRuntime.learn, with the trainer's rounds run here instead of on its thread."""
        if self.trainer is None or self.buffer is None:
            return []
        for example in output.examples:
            self.buffer.add(example.window, example.target)
        if output.lr_scale is not None:
            self.trainer.set_lr_scale(output.lr_scale)
        # One round per ``round_every`` examples, however many arrived in this chunk.
        due = (self.buffer.added - self._at_last_round) // self.round_every
        self._at_last_round += due * self.round_every
        if not self.trainer.ready():
            return []
        return [self.trainer.run_round() for _ in range(due)]

    # ---- feeding -------------------------------------------------------------------------
    def events(
        self,
        timestamps: Sequence[float] | npt.ArrayLike,
        values: npt.ArrayLike,
        key: str = "series",
    ) -> list[InputEvent]:
        """Readings as the stream would decode them: one event per row, offsets continuing.

        ``values`` is ``[N]`` or ``[N, F]`` (F = the group's channels, in order); NaN is a
        missing value (sent as null). ``timestamps`` are seconds since the epoch.
        """
        stamps = np.asarray(timestamps, dtype=np.float64)
        array = np.asarray(values, dtype=np.float64)
        if array.ndim == 1:
            array = array[:, None]
        channels = self.group.model.input_size
        if array.ndim != 2 or array.shape[1] != channels:
            raise ValueError(f"values must be [N] or [N, {channels}], got {array.shape}")
        if stamps.shape != (array.shape[0],):
            raise ValueError(f"{stamps.size} timestamps for {array.shape[0]} rows")
        names = self.group.channels
        events = []
        for ts, row in zip(stamps.tolist(), array.tolist(), strict=True):
            cells = [v if math.isfinite(v) else None for v in row]
            if names:
                reading = Reading.model_validate(
                    {"timestamp": ts, "values": dict(zip(names, cells, strict=True))}
                )
            else:
                reading = Reading.model_validate({"timestamp": ts, "value": cells[0]})
            events.append(InputEvent(key, reading, REPLAY_TOPIC, 0, self._offset))
            self._offset += 1
        return events

    def process(self, events: list[InputEvent]) -> BatchOutput:
        """One ``SeriesProcessor.process`` call, then training as the live stream would do it."""
        with _torch_threads(self.threads):
            output = self._loop.run_until_complete(self.processor.process(events, self.states))
            self._learn(output)
        return output

    def close(self) -> None:
        """Close the private event loop (also done when the harness is garbage-collected)."""
        self._loop.close()

    def __enter__(self) -> ReplayHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def replay(
        self,
        timestamps: Sequence[float] | npt.ArrayLike,
        values: npt.ArrayLike,
        key: str = "series",
    ) -> ReplayResult:
        """Feed one series in chunks; per row, what the stream published for it."""
        events = self.events(timestamps, values, key)
        first = events[0].offset if events else self._offset
        n = len(events)
        horizon = self.group.model.horizon
        scores = np.full(n, np.nan)
        anomaly = np.zeros(n, dtype=bool)
        forecasts = np.full((n, horizon), np.nan)
        lower = np.full((n, horizon), np.nan)
        upper = np.full((n, horizon), np.nan)
        rejected: dict[int, str] = {}
        filled: dict[int, int] = {}
        alerts: list[Alert] = []
        versions: list[str] = []
        for start in range(0, n, self.chunk_size):
            versions.append(self.engine.version)
            output = self.process(events[start : start + self.chunk_size])
            for prediction in output.predictions:
                row = prediction.provenance.offset - first
                scores[row] = prediction.score
                anomaly[row] = prediction.anomaly
                forecasts[row] = prediction.forecast
                lower[row] = prediction.lower
                upper[row] = prediction.upper
            for event, rejection in output.rejected:
                rejected[event.offset - first] = rejection.code
            for event, missing in output.filled:
                filled[event.offset - first] = missing
            alerts.extend(output.alerts)
        return ReplayResult(
            scores=scores,
            anomaly=anomaly,
            forecasts=forecasts,
            lower=lower,
            upper=upper,
            rejected=rejected,
            alerts=alerts,
            versions=versions,
            training=self.training_summary(),
            filled=filled,
        )

    def training_summary(self) -> TrainingSummary:
        if self.trainer is None or self.buffer is None:
            return TrainingSummary()
        stats = self.trainer.stats
        return TrainingSummary(
            rounds=stats.rounds,
            promotions=stats.promotions,
            steps=stats.steps,
            examples=self.buffer.added,
            rejections=stats.rejections,
        )


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads, then restore the process's setting."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- the evaluation interfaces: NAB detector and online forecaster -------------------------
def nab_group() -> ModelGroup:
    """The group config ``vigil eval nab --detector vigil`` runs with, the same for every file.

    Small enough that the 42-file NAB subset runs in minutes on two CPU cores; see
    docs/evaluation.md for how it was chosen and what it scores.
    """
    return ModelGroup.model_validate(
        {
            "name": "nab",
            # calendar: the default ("auto"), as the stream runs
            "model": {"window": 32, "hidden_size": 32, "num_layers": 1, "horizon": 1},
            # the range-break part on (the default); see docs/evaluation.md for the windows
            "detector": {"short_window": 80, "long_window": 2000},
        }
    )


def forecast_group(horizon: int, calendar: str = "auto") -> ModelGroup:
    """The group config ``vigil eval forecast`` runs Vigil's forecaster with (``calendar``: the
    model's calendar inputs, see ``ModelConfig.calendar``): seasonal lags detected per key and
    the forecast combined with persistence, the same for every series (docs/evaluation.md)."""
    return ModelGroup.model_validate(
        {
            "name": "forecast",
            "model": {
                "window": 64,
                "hidden_size": 32,
                "num_layers": 1,
                "horizon": horizon,
                "calendar": calendar,
                "season_lag": "auto",
                "combine": "persistence",
            },
            "training": {"learning_rate": 0.003},
        }
    )


class VigilDetector:
    """Vigil's stream logic as an anomaly detector: each row's published ``Prediction.score``.

    Rows the stream publishes no prediction for (the key's window still filling, a rejected
    duplicate timestamp) score 0.0: no evidence. ``score_series`` replays a whole series in
    chunks with its real timestamps; ``score_one`` feeds one value at a time with one-second
    steps. Use one or the other on a detector.
    """

    def __init__(self, group: ModelGroup | None = None, *, seed: int = 0, train: bool = True):
        self.harness = ReplayHarness(group or nab_group(), seed=seed, train=train)
        self._next_ts = 0.0

    def score_series(self, timestamps: npt.ArrayLike, values: npt.ArrayLike) -> list[float]:
        result = self.harness.replay(timestamps, values)
        return np.nan_to_num(result.scores, nan=0.0).tolist()

    def score_one(self, value: float) -> float:
        result = self.harness.replay([self._next_ts], [value])
        self._next_ts += 1.0
        score = float(result.scores[0])
        return 0.0 if math.isnan(score) else score


class VigilForecaster:
    """Vigil's stream logic as an online forecaster: the forecast the stream published for the
    last value learned (NaN while the window fills), with its conformal interval.

    The stream forecasts the next ``horizon`` steps of its own time grid: after a time gap (a
    weekend in daily data) the next value is more than one step ahead. ``grid_steps`` records,
    per value learned, how many steps the stream moved on (1 + the missing steps it filled
    before it; 0 when it rejected the value), so an evaluation can match each forecast step to
    the row it covers (``vigil.bench.forecast_eval.align_to_rows``).
    """

    def __init__(
        self,
        horizon: int = 1,
        group: ModelGroup | None = None,
        *,
        seed: int = 0,
        train: bool = True,
    ) -> None:
        group = group or forecast_group(horizon)
        if group.model.horizon != horizon:
            raise ValueError(f"group horizon {group.model.horizon} is not {horizon}")
        self.horizon = horizon
        self.harness = ReplayHarness(group, seed=seed, train=train)
        self._next_ts = 0.0
        self._forecast = [math.nan] * horizon
        self._lower = [math.nan] * horizon
        self._upper = [math.nan] * horizon
        self.grid_steps: list[int] = []
        self.rejected: dict[int, str] = {}  # value index -> the stream's rejection code

    def predict_one(self) -> list[float]:
        return list(self._forecast)

    def interval_one(self) -> tuple[list[float], list[float]]:
        return list(self._lower), list(self._upper)

    def set_next_timestamp(self, ts: float) -> None:
        """The time of the next value learned (epoch seconds); otherwise one-second steps."""
        self._next_ts = float(ts)

    def learn_one(self, value: float) -> None:
        index = len(self.grid_steps)
        result = self.harness.replay([self._next_ts], [value])
        self._next_ts += 1.0
        if 0 in result.rejected:  # nothing published: the stream's last forecast still stands
            self.rejected[index] = result.rejected[0]
            self.grid_steps.append(0)
            return
        self.grid_steps.append(1 + result.filled.get(0, 0))
        self._forecast = result.forecasts[0].tolist()
        self._lower = result.lower[0].tolist()
        self._upper = result.upper[0].tolist()
