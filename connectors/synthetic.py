"""Seeded synthetic series with injected anomalies and the labels of what was injected.

Each key is seasonal + trend + noise. Anomalies are placed after a clean warm-up, never overlap,
and are confined to their label window — outside the labels a series equals its clean version:

- ``spike``: one point far outside the seasonal range;
- ``level_shift``: the level jumps by a constant for the window, then jumps back;
- ``drift``: a slow triangular departure that peaks mid-window and returns;
- ``dropout``: missing values, sent as ``"value": null``.

The clean series and the anomalies come from separate random streams, so the same seed gives
the same clean series whichever anomalies are asked for (tests compare the two).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
from tqdm import tqdm

from vigil.connectors.pacing import Pacer
from vigil.connectors.producer import RecordProducer
from vigil.records import Reading

ANOMALY_KINDS = ("spike", "level_shift", "drift", "dropout")
DEFAULT_START_TS = 1_700_000_000.0  # fixed, so a seed gives the same timestamps on every run


@dataclass(frozen=True)
class AnomalyLabel:
    """An injected anomaly; ``start_ts`` and ``end_ts`` are the first and last affected points."""

    key: str
    kind: str
    start_ts: float
    end_ts: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        return cls(str(d["key"]), str(d["kind"]), float(d["start_ts"]), float(d["end_ts"]))


@dataclass(frozen=True)
class SeriesShape:
    """The clean signal of one key."""

    level: float
    amplitude: float
    period: int
    phase: float
    trend: float
    noise: float


class SyntheticSeries:
    """Several seeded series with anomalies; everything is computed up front (pure, no I/O)."""

    def __init__(
        self,
        keys: int | Sequence[str] = 5,
        points: int = 2000,
        seed: int = 0,
        *,
        interval_s: float = 60.0,
        start_ts: float = DEFAULT_START_TS,
        anomalies_per_key: int = 4,
        kinds: Sequence[str] = ANOMALY_KINDS,
        warmup: int | None = None,
        key_prefix: str = "synthetic.",
    ) -> None:
        unknown = sorted(set(kinds) - set(ANOMALY_KINDS))
        if unknown:
            raise ValueError(f"unknown anomaly kinds {unknown}; known: {list(ANOMALY_KINDS)}")
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.keys = (
            [f"{key_prefix}{i:03d}" for i in range(keys)] if isinstance(keys, int) else list(keys)
        )
        if not self.keys:
            raise ValueError("at least one key is needed")
        self.points = points
        self.seed = seed
        self.interval_s = interval_s
        self.start_ts = start_ts
        self.warmup = max(64, points // 10) if warmup is None else warmup
        kinds = tuple(kinds) if anomalies_per_key > 0 else ()
        per_key = anomalies_per_key if kinds else 0
        slot = (points - self.warmup) // per_key if per_key else points
        if per_key and slot < 8:
            raise ValueError(
                f"{points} points leave {points - self.warmup} after the warm-up: too few for "
                f"{per_key} anomalies per key (each needs 8)"
            )
        base_seq, anomaly_seq = np.random.SeedSequence(seed).spawn(2)
        base_rng, anomaly_rng = np.random.default_rng(base_seq), np.random.default_rng(anomaly_seq)
        self.timestamps = start_ts + interval_s * np.arange(points)
        self.shapes: dict[str, SeriesShape] = {}
        self._clean: dict[str, np.ndarray] = {}
        self._values: dict[str, np.ndarray] = {}
        self.labels: list[AnomalyLabel] = []
        for key in self.keys:
            shape, clean = _clean_series(base_rng, points)
            self.shapes[key], self._clean[key] = shape, clean
            values = clean.copy()
            if per_key:
                order = list(kinds)
                anomaly_rng.shuffle(order)
                for n in range(per_key):
                    lo = self.warmup + n * slot
                    kind = order[n % len(order)]
                    start, end = _inject(anomaly_rng, values, shape, kind, lo, lo + slot)
                    self.labels.append(
                        AnomalyLabel(
                            key,
                            kind,
                            float(self.timestamps[start]),
                            float(self.timestamps[end - 1]),
                        )
                    )
            self._values[key] = values

    def clean(self, key: str) -> np.ndarray:
        """The series before injection."""
        return self._clean[key].copy()

    def values(self, key: str) -> list[float | None]:
        """The series as sent: NaN (a dropout) becomes None."""
        return [None if math.isnan(v) else float(v) for v in self._values[key]]

    def readings(self) -> Iterator[tuple[str, Reading]]:
        """Every reading in time order, keys interleaved at each step."""
        columns = {key: self.values(key) for key in self.keys}
        for i, ts in enumerate(self.timestamps.tolist()):
            for key in self.keys:
                yield key, Reading.model_validate({"timestamp": ts, "value": columns[key][i]})

    def labels_json(self) -> list[dict[str, Any]]:
        return [label.to_dict() for label in self.labels]

    def write_labels(self, path: Path) -> None:
        path.write_text(json.dumps(self.labels_json(), indent=1) + "\n")


def _clean_series(rng: np.random.Generator, points: int) -> tuple[SeriesShape, np.ndarray]:
    level = float(rng.uniform(20.0, 100.0))
    amplitude = level * float(rng.uniform(0.05, 0.2))
    shape = SeriesShape(
        level=level,
        amplitude=amplitude,
        period=int(rng.choice([48, 96, 144, 288])),
        phase=float(rng.uniform(0, 2 * math.pi)),
        trend=float(rng.normal(0.0, amplitude / max(points, 1))),
        noise=amplitude * float(rng.uniform(0.05, 0.12)),
    )
    t = np.arange(points)
    seasonal = shape.amplitude * np.sin(2 * math.pi * t / shape.period + shape.phase)
    clean = shape.level + seasonal + shape.trend * t + rng.normal(0.0, shape.noise, points)
    return shape, clean


def _inject(
    rng: np.random.Generator, values: np.ndarray, shape: SeriesShape, kind: str, lo: int, hi: int
) -> tuple[int, int]:
    """Inject one anomaly somewhere in ``[lo, hi)`` (with a margin), return its ``[start, end)``."""
    room = hi - lo
    margin = max(1, room // 8)
    longest = max(1, room - 2 * margin)
    if kind == "spike":
        length = 1
    elif kind == "dropout":
        length = int(rng.integers(min(5, longest), min(30, longest) + 1))
    else:  # level_shift, drift: long enough to be a state, not a blip
        length = int(rng.integers(max(1, longest // 3), longest + 1))
    start = lo + margin + int(rng.integers(0, longest - length + 1))
    end = start + length
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if kind == "spike":
        values[start] += sign * float(rng.uniform(3.0, 5.0)) * shape.amplitude
    elif kind == "level_shift":
        values[start:end] += sign * float(rng.uniform(1.0, 2.0)) * shape.amplitude
    elif kind == "drift":
        peak = sign * float(rng.uniform(1.0, 2.0)) * shape.amplitude
        x = np.arange(1, length + 1) / (length + 1)  # never 0 inside the window
        values[start:end] += peak * (1.0 - np.abs(2.0 * x - 1.0))
    elif kind == "dropout":
        values[start:end] = np.nan
    return start, end


async def send_synthetic(
    series: SyntheticSeries,
    producer: RecordProducer,
    *,
    speed: float = 0.0,
    topic: str | None = None,
    progress: bool = False,
) -> int:
    """Send every reading (paced like a replay: speed 1 = one step per ``interval_s``); return
    how many were sent, all flushed."""
    target = topic or producer.settings.topics.readings
    pacer = Pacer(speed)
    sent = 0
    with tqdm(
        total=series.points * len(series.keys), unit="rec", disable=not progress, desc="synthetic"
    ) as bar:
        try:
            for key, reading in series.readings():
                if (wait := pacer.delay(reading.ts)) > 0:
                    await asyncio.sleep(wait)
                await producer.send_reading(key, reading, target)
                sent += 1
                bar.update(1)
        finally:
            await producer.flush()
    return sent
