"""The agents' logic for one model group, without Kafka: events in, records out.

The Faust agent and the evaluation harness both call :meth:`SeriesProcessor.process`, so what is
evaluated is what is deployed. One call handles a batch of events from many keys in three steps:

1. per key, in time order: drop replays, dead-letter duplicates and late events, fill gaps,
   normalise, push into the key's window and snapshot the window;
2. ONE batched forward pass over every snapshot (several events of one key included: each window
   is already known, so nothing waits on the previous forecast);
3. per key, in time order: score each value against the forecast made one step earlier, update
   intervals, incidents and drift, emit predictions and alerts, and cut training examples.
"""

from __future__ import annotations

import base64
import math
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from models.scoring import reduce_residual
from stream.key_state import KeyState, PendingForecast
from stream.validation import InputEvent, Rejection
from vigil import __version__
from vigil.records import Alert, DriftEvent, Prediction, Provenance
from vigil.settings import ModelGroup

Predictor = Callable[[np.ndarray], Awaitable[np.ndarray]]  # [N,T,F] -> [N,H,F], normalised
# Stateful mode: (x [N,F], stored (state, version) per key, windows [N,T,F] to warm from)
#   -> (forecasts [N,H,F], new states, version that ran)
Stepper = Callable[
    [np.ndarray, list[tuple[bytes, str] | None], np.ndarray],
    Awaitable[tuple[np.ndarray, list[bytes], str]],
]
MAX_GAP_FILL_FACTOR = 1  # fill at most one window of missing steps; a longer gap restarts the key
GAP_RATIO = 1.5  # a delta this many typical intervals long means steps are missing
INTERVAL_EWMA = 0.05


@dataclass
class TrainingExample:
    window: np.ndarray  # [T,F] normalised
    target: np.ndarray  # [H,F] normalised


@dataclass
class BatchOutput:
    predictions: list[Prediction] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    drift: list[DriftEvent] = field(default_factory=list)
    rejected: list[tuple[InputEvent, Rejection]] = field(default_factory=list)
    examples: list[TrainingExample] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    lr_scale: float | None = None  # the newest drift-driven learning-rate scale, if any
    flagged_offsets: set[tuple[str, int, int]] = field(default_factory=set)


@dataclass
class _Step:
    """One accepted event between step 1 and step 3."""

    event: InputEvent
    observed: list[float | None]  # raw units
    normalised: list[float]  # NaN where missing
    gap: int  # missing steps filled before this event
    mean: np.ndarray
    std: np.ndarray
    snapshot: np.ndarray | None  # the window+horizon buffer after this event
    full: bool  # the buffer holds window + horizon real rows: a training pair can be cut
    request: int | None = None  # row in the batched forward pass


class SeriesProcessor:
    def __init__(
        self,
        group: ModelGroup,
        predictor: Predictor,
        model_version: Callable[[], str],
        stepper: Stepper | None = None,
    ):
        if group.inference == "stateful" and stepper is None:
            raise ValueError(f"group {group.name!r} is stateful but no stepper was given")
        self.group = group
        self.predict = predictor
        self.step = stepper
        self.model_version = model_version
        self.window = group.model.window
        self.horizon = group.model.horizon
        self.channels = group.model.input_size

    def new_state(self, key: str) -> KeyState:
        return KeyState.new(key, self.group)

    async def process(self, events: list[InputEvent], states: dict[str, KeyState]) -> BatchOutput:
        """Handle a batch; ``states`` holds (and receives) the state of every key in it."""
        out = BatchOutput()
        by_key: dict[str, list[InputEvent]] = defaultdict(list)
        for event in events:
            by_key[event.key].append(event)

        steps: dict[str, list[_Step]] = {}
        windows: list[np.ndarray] = []
        for key, key_events in by_key.items():
            state = states.get(key)
            if state is None:
                state = states[key] = self.new_state(key)
                out.outcomes["new_key"] += 1
            key_events.sort(key=lambda e: (e.reading.ts, e.offset))  # the reorder buffer
            steps[key] = self._observe(state, key_events, out, windows)

        if not windows:
            forecasts = np.empty((0,))
        elif self.group.inference == "stateful":
            forecasts = await self._step_rounds(steps, states, windows)
        else:
            forecasts = await self.predict(np.stack(windows))
        if windows:
            out.outcomes["inferred"] += len(windows)
        version = self.model_version()
        for key, key_steps in steps.items():
            self._emit(states[key], key_steps, forecasts, version, out)
            if key_steps:
                out.touched.add(key)
        return out

    # ---- step 1 -------------------------------------------------------------------------
    def _observe(
        self, state: KeyState, events: list[InputEvent], out: BatchOutput, windows: list[np.ndarray]
    ) -> list[_Step]:
        accepted: list[_Step] = []
        for event in events:
            if self._redelivered(state, event):
                out.outcomes["replayed"] += 1
                continue
            rejection = self._check_order(state, event)
            if rejection is not None:
                out.rejected.append((event, rejection))
                continue
            vector = self._vector(event)
            if isinstance(vector, Rejection):
                out.rejected.append((event, vector))
                continue
            gap = self._fill_gap(state, event.reading.ts, out)
            if all(v is None for v in vector):
                out.outcomes["missing_value"] += 1
            state.normalizer.update(vector)
            normalised = state.normalizer.normalize(vector)
            state.window.push(normalised)  # missing values are filled by the gap policy
            snapshot = state.window.array() if state.window.size >= self.window else None
            step = _Step(
                event=event,
                observed=vector,
                normalised=[math.nan if n is None else n for n in normalised],
                gap=gap,
                mean=np.asarray(state.normalizer.mean, dtype=np.float64),
                std=state.normalizer.std(),
                snapshot=snapshot,
                full=state.window.ready,
            )
            if snapshot is not None:
                step.request = len(windows)
                windows.append(snapshot[-self.window :])  # the newest `window` rows
            state.last_ts = event.reading.ts
            state.partition, state.offset = event.partition, event.offset
            state.events += 1
            if vector[0] is not None:
                state.recent.append(float(vector[0]))
            accepted.append(step)
        return accepted

    @staticmethod
    def _redelivered(state: KeyState, event: InputEvent) -> bool:
        """Kafka redelivers after a restart what was absorbed but not committed: skip it."""
        return (
            state.partition == event.partition
            and state.offset is not None
            and event.offset <= state.offset
        )

    # ---- step 2, stateful mode --------------------------------------------------------------
    async def _step_rounds(
        self, steps: dict[str, list[_Step]], states: dict[str, KeyState], windows: list[np.ndarray]
    ) -> np.ndarray:
        """One LSTM step per event: round r batches the r-th event of every key, so a key's
        events still go through its state in order. A key whose state is missing, from another
        model version, or interrupted by a gap is warmed from its window instead."""
        assert self.step is not None
        forecasts = np.empty((len(windows), self.horizon, self.channels), np.float32)
        queues = {
            key: [s for s in key_steps if s.request is not None] for key, key_steps in steps.items()
        }
        for round_index in range(max((len(q) for q in queues.values()), default=0)):
            keys = [key for key, q in queues.items() if round_index < len(q)]
            rows = [queues[key][round_index] for key in keys]
            stored: list[tuple[bytes, str] | None] = []
            for key, step in zip(keys, rows, strict=True):
                hidden, version = states[key].hidden, states[key].hidden_version
                usable = hidden is not None and version is not None and not step.gap
                stored.append((base64.b64decode(hidden), version) if usable else None)  # type: ignore[arg-type]
            requests = [step.request for step in rows if step.request is not None]
            window_rows = np.stack([windows[r] for r in requests])
            result, new_states, ran = await self.step(window_rows[:, -1, :], stored, window_rows)
            for key, request, row, blob in zip(keys, requests, result, new_states, strict=True):
                forecasts[request] = row
                states[key].hidden = base64.b64encode(blob).decode("ascii")
                states[key].hidden_version = ran
        return forecasts

    def _check_order(self, state: KeyState, event: InputEvent) -> Rejection | None:
        if state.last_ts is None:
            return None
        ts = event.reading.ts
        if ts == state.last_ts:
            return Rejection(
                "duplicate", f"duplicate: key {event.key!r} already has timestamp {ts}"
            )
        if ts < state.last_ts:
            return Rejection(
                "late",
                f"late: timestamp {ts} is {state.last_ts - ts:.3f}s older than the key's last "
                f"({state.last_ts}); beyond the reorder buffer",
            )
        return None

    def _vector(self, event: InputEvent) -> list[float | None] | Rejection:
        reading = event.reading
        names = self.group.channels or None
        if reading.values is not None and names is None and self.channels == 1:
            return Rejection(
                "shape", f"group {self.group.name!r} is univariate; send 'value', not 'values'"
            )
        if reading.values is not None and names is not None:
            unknown = set(reading.values) - set(names)
            if unknown:
                return Rejection("shape", f"unknown channels {sorted(unknown)}; expected {names}")
        vector = reading.vector(names)
        if len(vector) != self.channels:
            return Rejection(
                "shape",
                f"expected {self.channels} values for group {self.group.name!r}, got {len(vector)}",
            )
        return vector

    def _fill_gap(self, state: KeyState, ts: float, out: BatchOutput) -> int:
        """Push missing steps for a time gap (the window's gap policy fills them)."""
        if state.last_ts is None:
            return 0
        delta = ts - state.last_ts
        if state.interval is None:
            state.interval = delta
            return 0
        missing = 0
        if delta > GAP_RATIO * state.interval > 0:
            missing = round(delta / state.interval) - 1
            out.outcomes["gap"] += 1
            for _ in range(min(missing, self.window * MAX_GAP_FILL_FACTOR)):
                state.window.push([None] * self.channels)
                for conformal in state.conformal:
                    conformal.observe(None)
                if state.pending is not None:
                    state.pending.age += 1
        else:
            state.interval += INTERVAL_EWMA * (delta - state.interval)
        return missing

    # ---- step 3 -------------------------------------------------------------------------
    def _emit(
        self,
        state: KeyState,
        steps: list[_Step],
        forecasts: np.ndarray,
        version: str,
        out: BatchOutput,
    ) -> None:
        group = self.group.name
        for step in steps:
            event = step.event
            provenance = Provenance(
                topic=event.topic,
                partition=event.partition,
                offset=event.offset,
                model_version=version,
                vigil_version=__version__,
            )
            residual = self._residual(state, step)
            result = state.scorer.score_one(residual)
            incident = state.incidents.update(result.score, event.reading.ts)
            flagged = state.incidents.active or (incident is not None and incident.kind == "opened")
            if flagged:
                out.flagged_offsets.add((event.topic, event.partition, event.offset))
            signal = (
                state.drift.update(residual, event.reading.ts) if math.isfinite(residual) else None
            )
            if signal is not None:
                out.lr_scale = state.drift.lr_scale
                out.drift.append(
                    DriftEvent(
                        key=state.key,
                        group=group,
                        timestamp=event.reading.ts,
                        direction=signal.direction,
                        method=signal.method,
                        statistic=float(signal.statistic),
                        lr_scale=state.drift.lr_scale,
                        provenance=provenance,
                    )
                )
            if state.admission.admit(flagged):
                if step.full and step.snapshot is not None:
                    rows = step.snapshot
                    out.examples.append(TrainingExample(rows[: self.window], rows[self.window :]))
            else:
                out.outcomes["withheld_from_training"] += 1

            for channel, conformal in enumerate(state.conformal):
                conformal.observe(step.observed[channel])

            forecast_raw: np.ndarray | None = None
            if step.request is not None:
                normalised = forecasts[step.request]  # [H,F]
                forecast_raw = normalised * step.std + step.mean
                state.pending = PendingForecast(normalised.astype(float).tolist(), 0)
                bounds = [
                    c.issue(forecast_raw[:, ch].tolist()) for ch, c in enumerate(state.conformal)
                ]
                observed0 = step.observed[0]
                out.predictions.append(
                    Prediction(
                        key=state.key,
                        timestamp=event.reading.ts,
                        forecast=forecast_raw[:, 0].tolist(),
                        lower=[lo for lo, _ in bounds[0]],
                        upper=[hi for _, hi in bounds[0]],
                        channels=self._channel_forecasts(forecast_raw, bounds),
                        observed=observed0,
                        score=result.score,
                        anomaly=flagged,
                        group=group,
                        provenance=provenance,
                    )
                )
                out.outcomes["predicted"] += 1
            else:
                out.outcomes["warming"] += 1

            if incident is not None:
                context = forecast_raw[:, 0].tolist() if forecast_raw is not None else []
                out.alerts.append(
                    Alert(
                        alert_id=incident.incident_id,
                        key=state.key,
                        group=group,
                        status="firing" if incident.kind == "opened" else "resolved",
                        severity=incident.severity,
                        start=incident.start,
                        end=incident.end,
                        score=incident.peak if incident.kind == "resolved" else incident.score,
                        recent_values=list(state.recent),
                        forecast=context,
                        provenance=provenance,
                    )
                )

    def _residual(self, state: KeyState, step: _Step) -> float:
        """Normalised residual of this value against the forecast that covered it (NaN: none)."""
        pending = state.pending
        if pending is None:
            return math.nan
        pending.age += 1
        ahead = pending.age - 1
        if ahead >= self.horizon:
            state.pending = None
            return math.nan
        forecast = pending.values[ahead]
        diffs = [o - f for o, f in zip(step.normalised, forecast, strict=True)]
        return reduce_residual(diffs)

    def _channel_forecasts(
        self, forecast_raw: np.ndarray, bounds: list[list[tuple[float, float]]]
    ) -> dict[str, dict[str, list[float]]] | None:
        names = self.group.channels
        if not names:
            return None
        return {
            name: {
                "forecast": forecast_raw[:, ch].tolist(),
                "lower": [lo for lo, _ in bounds[ch]],
                "upper": [hi for _, hi in bounds[ch]],
            }
            for ch, name in enumerate(names)
        }
