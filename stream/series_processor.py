"""The agents' logic for one model group, without Kafka: events in, records out.

The Faust agent and the evaluation harness both call :meth:`SeriesProcessor.process`, so what is
evaluated is what is deployed. One call handles a batch of events from many keys in three steps:

1. per key, in time order: drop replays (offsets the key's saved state already absorbed, per
   source topic-partition), dead-letter duplicates, late, far-future and out-of-range events,
   fill gaps, normalise, push into the key's window and snapshot the window;
2. ONE batched forward pass over every snapshot (several events of one key included: each window
   is already known, so nothing waits on the previous forecast);
3. per key, in time order: score each value against the forecast made one step earlier, update
   intervals, incidents and drift (:meth:`SeriesProcessor._assess`), then build the prediction,
   alert and drift records and cut training examples.

A key whose processing raises (a bug, or state no estimator can use) loses only its own events
to dead letters (``processing_error``) and is reloaded from its last saved state next time: one
key never takes the other keys of a batch down.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from vigil import __version__
from vigil.models.calendar import NO_CALENDAR, calendar_features
from vigil.models.drift import DriftSignal
from vigil.models.incidents import IncidentEvent
from vigil.models.novelty import fuse_scores
from vigil.models.scoring import ScoreResult, reduce_residual
from vigil.models.state_codec import clone, get_params
from vigil.models.window import WindowBuffer
from vigil.records import Alert, DriftEvent, Prediction, Provenance
from vigil.settings import ModelGroup
from vigil.stream.key_state import (
    KeyState,
    PendingForecast,
    new_combination,
    new_range_break,
    new_reference,
    new_season,
)
from vigil.stream.source_position import SourcePosition
from vigil.stream.validation import InputEvent, Rejection

Predictor = Callable[[np.ndarray], Awaitable[np.ndarray]]  # [N,T,F] -> [N,H,F], normalised
# Stateful mode: (x [N,F], stored (state, version) per key, windows [N,T,F] to warm from)
#   -> (forecasts [N,H,F], new states, version that ran)
Stepper = Callable[
    [np.ndarray, list[tuple[bytes, str] | None], np.ndarray],
    Awaitable[tuple[np.ndarray, list[bytes], str]],
]
log = logging.getLogger("vigil.processor")
GAP_RATIO = 1.5  # a delta this many typical intervals long means steps are missing
INTERVAL_EWMA = 0.05
# calendar "auto": a key is regular while the EWMA of how far each delta is from a whole number
# of intervals (in intervals; missing steps, i.e. whole-interval gaps, do not count against it)
# stays below this. Random spacing averages about 0.25.
REGULAR_JITTER = 0.15


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
    # accepted events that came after a time gap: the missing steps filled before each
    filled: list[tuple[InputEvent, int]] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)  # keys whose processing raised: not saved


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


@dataclass
class _Assessment:
    """What the per-key estimators made of one accepted event (step 3, before any record)."""

    score: ScoreResult  # the residual likelihood
    fused: float  # the published score: the parts fused by DetectorConfig.fusion
    parts: dict[str, float]  # each detector's own score
    incident: IncidentEvent | None
    flagged: bool
    drift: DriftSignal | None
    # reference mode: the event departs from the key's known-normal period, so it must not teach
    # the model (whatever the admission's level-shift rule says)
    off_reference: bool = False


class SeriesProcessor:
    def __init__(
        self,
        group: ModelGroup,
        predictor: Predictor,
        model_version: Callable[[], str],
        stepper: Stepper | None = None,
        *,
        max_future_s: float | None = None,
        clock: Callable[[], float] = time.time,
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
        self.calendar = group.model.calendar
        self.max_abs_value = group.max_abs_value
        self.max_future_s = max_future_s
        self.clock = clock
        # the optional per-key estimators the group's settings ask for (None = off), built once:
        # a key's state is checked against them each batch and given a clone where it differs
        self._estimators: dict[str, object | None] = {
            "season": new_season(group.model),
            "combination": new_combination(group.model),
            "range_break": new_range_break(group),
            "reference": new_reference(group),
        }

    def new_state(self, key: str) -> KeyState:
        return KeyState.new(key, self.group)

    async def process(self, events: list[InputEvent], states: dict[str, KeyState]) -> BatchOutput:
        """Handle a batch; ``states`` holds (and receives) the state of every key in it.

        A key in ``out.failed`` raised while being processed: its events are dead-lettered and
        its in-memory state is dropped from ``states`` (its saved state is reloaded next time).
        """
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
            try:
                steps[key] = self._observe(state, key_events, out, windows)
            except Exception as exc:
                self._fail_key(key, key_events, exc, states, out)

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
            try:
                for step in key_steps:
                    self._emit(states[key], step, forecasts, version, out)
            except Exception as exc:
                self._fail_key(key, by_key[key], exc, states, out)
                continue
            out.touched.add(key)  # even all-rejected: its positions moved
        return out

    def _fail_key(
        self,
        key: str,
        events: list[InputEvent],
        exc: Exception,
        states: dict[str, KeyState],
        out: BatchOutput,
    ) -> None:
        log.error("group %s: key %r failed (%s: %s); its events go to dead letters",
                  self.group.name, key, type(exc).__name__, exc)  # fmt: skip
        states.pop(key, None)
        out.failed.add(key)
        out.touched.discard(key)
        reason = Rejection("processing_error", f"{type(exc).__name__}: {exc}"[:500])
        out.rejected = [(e, r) for e, r in out.rejected if e.key != key]
        out.predictions = [p for p in out.predictions if p.key != key]
        out.alerts = [a for a in out.alerts if a.key != key]
        out.drift = [d for d in out.drift if d.key != key]
        out.filled = [(e, gap) for e, gap in out.filled if e.key != key]
        out.rejected.extend((event, reason) for event in events)

    # ---- step 1 -------------------------------------------------------------------------
    def _observe(
        self, state: KeyState, events: list[InputEvent], out: BatchOutput, windows: list[np.ndarray]
    ) -> list[_Step]:
        accepted: list[_Step] = []
        if state.window.channels != self.group.model.features:
            # state saved before the calendar setting changed: restart the window, keep the rest
            state.window = WindowBuffer(
                state.window.length, self.group.model.features, self.group.gap_policy
            )
        self._fit_estimators(state)
        absorbed = dict(state.positions)  # what the saved state had, before this batch
        for event in events:
            source = SourcePosition(event.topic, event.partition, event.offset).source
            if event.offset <= absorbed.get(source, -1):
                out.outcomes["replayed"] += 1  # redelivered after a restart: already in state
                continue
            state.positions[source] = max(state.positions.get(source, -1), event.offset)
            rejection = self._check_time(state, event)
            vector = self._vector(event) if rejection is None else rejection
            if isinstance(vector, Rejection):
                out.rejected.append((event, vector))
                continue
            gap = self._fill_gap(state, event.reading.ts, out)
            if gap:
                out.filled.append((event, gap))
            if all(v is None for v in vector):
                out.outcomes["missing_value"] += 1
            state.normalizer.update(vector)
            normalised = state.normalizer.normalize(vector)
            # missing values are filled by the gap policy; the calendar context rides along
            state.window.push(
                [
                    *normalised,
                    *self._calendar(state, event.reading.ts),
                    *self._season(state, normalised, vector[0]),
                ]
            )
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
            state.events += 1
            if vector[0] is not None:
                state.recent.append(float(vector[0]))
            accepted.append(step)
        return accepted

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
                forecasts[request] = row[..., : self.channels]
                states[key].hidden = base64.b64encode(blob).decode("ascii")
                states[key].hidden_version = ran
        return forecasts

    def _check_time(self, state: KeyState, event: InputEvent) -> Rejection | None:
        ts = event.reading.ts
        if self.max_future_s is not None:
            now = event.kafka_ts if event.kafka_ts else self.clock()
            if ts - now > self.max_future_s:
                return Rejection(
                    "future",
                    f"timestamp {ts} is {ts - now:.0f}s ahead of the record's Kafka"
                    f" timestamp ({now}); the limit is {self.max_future_s:.0f}s",
                )
        if state.last_ts is None:
            return None
        if ts == state.last_ts:
            return Rejection("duplicate", f"key {event.key!r} already has timestamp {ts}")
        if ts < state.last_ts:
            return Rejection(
                "late",
                f"timestamp {ts} is {state.last_ts - ts:.3f}s older than the key's last "
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
        for value in vector:
            if value is not None and abs(value) > self.max_abs_value:
                return Rejection(
                    "out_of_range",
                    f"|{value}| exceeds group {self.group.name!r}'s max_abs_value"
                    f" {self.max_abs_value:g}",
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
        if state.interval > 0:
            ratio = delta / state.interval
            off_grid = min(abs(ratio - max(1, round(ratio))), 1.0)
            state.jitter += INTERVAL_EWMA * (off_grid - state.jitter)
        if delta > GAP_RATIO * state.interval > 0:
            missing = round(delta / state.interval) - 1
            out.outcomes["gap"] += 1
            pushed = min(missing, self.window)  # a longer gap only restarts the window
            if state.season is not None:  # ... but the seasonal ring keeps its grid
                interval = state.interval if self.regular(state) else None
                state.season.skip(missing - pushed, interval)
            for k in range(missing - pushed + 1, missing + 1):
                step_ts = state.last_ts + k * state.interval  # the missing step's own time
                empty: list[float | None] = [None] * self.channels
                state.window.push(
                    [*empty, *self._calendar(state, step_ts), *self._season(state, empty, None)]
                )
                for conformal in state.conformal:
                    conformal.observe(None)
                if state.pending is not None:
                    state.pending.age += 1
        else:
            state.interval += INTERVAL_EWMA * (delta - state.interval)
        return missing

    def _calendar(self, state: KeyState, ts: float) -> tuple[float, ...]:
        """The calendar columns of a row at ``ts``: none when the model has no such inputs;
        zeros ("no context") in ``auto`` mode while the key's timestamps are not regular."""
        if self.calendar == "off":
            return ()
        if self.calendar == "auto" and not self.regular(state):
            return NO_CALENDAR
        return calendar_features(ts)

    def _season(
        self, state: KeyState, normalised: list[float | None], raw: float | None
    ) -> list[float]:
        """The seasonal-lag columns of the next row (none when the model has no such inputs)."""
        if state.season is None:
            return []
        interval = state.interval if self.regular(state) else None
        return state.season.push(normalised, raw, interval)

    def _fit_estimators(self, state: KeyState) -> None:
        """Build the optional estimators a key's saved state lacks (stored before them, or the
        group's settings changed: a fresh one), or drop those the group no longer uses."""
        for name, wanted in self._estimators.items():
            if not _same_params(getattr(state, name), wanted):
                setattr(state, name, None if wanted is None else clone(wanted))

    @staticmethod
    def regular(state: KeyState) -> bool:
        """The key's timestamps come at a steady pace (known interval, little jitter)."""
        return state.interval is not None and state.interval > 0 and (state.jitter < REGULAR_JITTER)

    # ---- step 3 -------------------------------------------------------------------------
    def _emit(
        self, state: KeyState, step: _Step, forecasts: np.ndarray, version: str, out: BatchOutput
    ) -> None:
        event = step.event
        provenance = Provenance(
            topic=event.topic,
            partition=event.partition,
            offset=event.offset,
            model_version=version,
            vigil_version=__version__,
        )
        seen = self._assess(state, step)
        if seen.drift is not None:
            out.lr_scale = state.drift.lr_scale
            out.drift.append(self._drift_record(state, step, seen.drift, provenance))
        if state.admission.admit(seen.flagged) and not seen.off_reference:
            if step.full and step.snapshot is not None:
                rows = step.snapshot
                target = rows[self.window :, : self.channels]  # values only, no calendar
                out.examples.append(TrainingExample(rows[: self.window], target))
        else:
            out.outcomes["withheld_from_training"] += 1
        for channel, conformal in enumerate(state.conformal):
            conformal.observe(step.observed[channel])
        if state.combination is not None:
            state.combination.observe(step.normalised, step.gap)

        forecast_raw: np.ndarray | None = None
        if step.request is not None:
            normalised = forecasts[step.request][:, : self.channels]  # [H,F]
            if state.combination is not None and step.snapshot is not None:
                # the published forecast: the last value plus the network's change, with the
                # weight the network has earned on this key
                last = step.snapshot[-1, : self.channels]
                normalised = state.combination.combine(normalised, last.tolist())
            forecast_raw = normalised * step.std + step.mean
            state.pending = PendingForecast(normalised.astype(float).tolist(), 0)
            out.predictions.append(self._prediction(state, step, forecast_raw, seen, provenance))
            out.outcomes["predicted"] += 1
        else:
            out.outcomes["warming"] += 1
        if seen.incident is not None:
            out.alerts.append(self._alert(state, seen.incident, forecast_raw, provenance))

    def _assess(self, state: KeyState, step: _Step) -> _Assessment:
        """The estimator step: residual → likelihood, value → novelty, fused score → incident →
        drift, in that order."""
        residual = self._residual(state, step)
        score = state.scorer.score_one(residual)
        value = step.observed[0]
        novelty = state.novelty.score_one(math.nan if value is None else value)
        detector = self.group.detector
        fused = fuse_scores(detector.fusion, score.score, novelty, detector.threshold)
        parts = {"likelihood": score.score, "novelty": novelty}
        range_part = self._range_break(state, value)
        if range_part is not None:
            parts["range"] = range_part
            fused = max(fused, range_part)  # a range break is news whatever the fusion rule
        reference = self._reference(state, step)
        if reference is not None:
            parts["reference"] = reference
            fused = reference if detector.reference.fusion == "reference" else max(fused, reference)
        incident = state.incidents.update(fused, step.event.reading.ts)
        flagged = state.incidents.active or (incident is not None and incident.kind == "opened")
        drift = (
            state.drift.update(residual, step.event.reading.ts) if math.isfinite(residual) else None
        )
        off_reference = reference is not None and reference >= detector.clear_threshold
        return _Assessment(score, fused, parts, incident, flagged, drift, off_reference)

    def _range_break(self, state: KeyState, value: float | None) -> float | None:
        """The range-break part (None when ``detector.range_tolerance`` is off), first channel."""
        if state.range_break is None:
            return None
        return state.range_break.score_one(math.nan if value is None else value)

    def _reference(self, state: KeyState, step: _Step) -> float | None:
        """Reference mode's part (None when off): the event against the key's known-normal
        period, from the raw values (the normaliser follows a fault; the profile must not)."""
        if state.reference is None:
            return None
        return state.reference.score_one([math.nan if v is None else v for v in step.observed])

    def _prediction(
        self,
        state: KeyState,
        step: _Step,
        forecast_raw: np.ndarray,
        seen: _Assessment,
        provenance: Provenance,
    ) -> Prediction:
        bounds = [c.issue(forecast_raw[:, ch].tolist()) for ch, c in enumerate(state.conformal)]
        return Prediction(
            key=state.key,
            timestamp=step.event.reading.ts,
            forecast=forecast_raw[:, 0].tolist(),
            lower=[lo for lo, _ in bounds[0]],
            upper=[hi for _, hi in bounds[0]],
            channels=self._channel_forecasts(forecast_raw, bounds),
            observed=step.observed[0],
            score=seen.fused,
            score_parts=seen.parts,
            anomaly=seen.flagged,
            group=self.group.name,
            provenance=provenance,
        )

    def _alert(
        self,
        state: KeyState,
        incident: IncidentEvent,
        forecast_raw: np.ndarray | None,
        provenance: Provenance,
    ) -> Alert:
        return Alert(
            alert_id=incident.incident_id,
            key=state.key,
            group=self.group.name,
            status="firing" if incident.kind == "opened" else "resolved",
            severity=incident.severity,
            start=incident.start,
            end=incident.end,
            score=incident.peak if incident.kind == "resolved" else incident.score,
            recent_values=list(state.recent),
            forecast=forecast_raw[:, 0].tolist() if forecast_raw is not None else [],
            provenance=provenance,
        )

    def _drift_record(
        self, state: KeyState, step: _Step, signal: DriftSignal, provenance: Provenance
    ) -> DriftEvent:
        return DriftEvent(
            key=state.key,
            group=self.group.name,
            timestamp=step.event.reading.ts,
            direction=signal.direction,
            method=signal.method,
            statistic=float(signal.statistic),
            lr_scale=state.drift.lr_scale,
            provenance=provenance,
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


def _same_params(kept: object | None, wanted: object | None) -> bool:
    """Both absent, or estimators of one type built with the same parameters."""
    if kept is None or wanted is None:
        return kept is wanted
    return type(kept) is type(wanted) and get_params(kept) == get_params(wanted)
