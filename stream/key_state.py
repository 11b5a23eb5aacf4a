"""Everything Vigil remembers about one series (key) of one model group, JSON-able for Redis.

Each part is a small pure estimator from ``models``; this module only bundles them and knows how
to create them for a new key and restore them from a stored dict.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Self

from models.admission import TrainingAdmission
from models.conformal import AdaptiveConformal
from models.drift import ResidualDriftMonitor
from models.incidents import IncidentDetector
from models.normalizer import RunningNormalizer
from models.scoring import ResidualScorer
from models.window import WindowBuffer
from vigil.settings import ModelGroup

CONTEXT_VALUES = 32  # recent raw values kept for alert context


@dataclass
class PendingForecast:
    """A forecast made at an earlier event, in normalised units, aged one step per event."""

    values: list[list[float]]  # [horizon][channels]
    age: int = 0


@dataclass
class KeyState:
    key: str
    group: str
    normalizer: RunningNormalizer
    window: WindowBuffer  # window + horizon normalised rows: inference input and training pairs
    scorer: ResidualScorer
    incidents: IncidentDetector
    conformal: list[AdaptiveConformal]  # one per channel
    drift: ResidualDriftMonitor
    admission: TrainingAdmission
    pending: PendingForecast | None = None
    hidden: str | None = None  # stateful mode: recurrent state (base64) after the last event
    hidden_version: str | None = None  # the model version that produced `hidden`
    last_ts: float | None = None
    interval: float | None = None  # typical time between events (EWMA), for gap detection
    events: int = 0
    partition: int | None = None
    offset: int | None = None
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=CONTEXT_VALUES))

    @classmethod
    def new(cls, key: str, group: ModelGroup) -> Self:
        model, detector = group.model, group.detector
        channels = model.input_size
        return cls(
            key=key,
            group=group.name,
            normalizer=RunningNormalizer(channels),
            window=WindowBuffer(model.window + model.horizon, channels, group.gap_policy),
            scorer=ResidualScorer.from_config(detector),
            incidents=IncidentDetector.from_config(key, detector),
            conformal=[
                AdaptiveConformal.from_config(detector, horizon=model.horizon)
                for _ in range(channels)
            ],
            drift=ResidualDriftMonitor.from_config(detector),
            admission=TrainingAdmission(group.training.level_shift_readmit_after),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "group": self.group,
            "normalizer": self.normalizer.to_dict(),
            "window": self.window.to_dict(),
            "scorer": self.scorer.to_dict(),
            "incidents": self.incidents.to_dict(),
            "conformal": [c.to_dict() for c in self.conformal],
            "drift": self.drift.to_dict(),
            "admission": self.admission.to_dict(),
            "pending": None if self.pending is None else [self.pending.values, self.pending.age],
            "hidden": self.hidden,
            "hidden_version": self.hidden_version,
            "last_ts": self.last_ts,
            "interval": self.interval,
            "events": self.events,
            "partition": self.partition,
            "offset": self.offset,
            "recent": list(self.recent),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        pending = d.get("pending")
        return cls(
            key=d["key"],
            group=d["group"],
            normalizer=RunningNormalizer.from_dict(d["normalizer"]),
            window=WindowBuffer.from_dict(d["window"]),
            scorer=ResidualScorer.from_dict(d["scorer"]),
            incidents=IncidentDetector.from_dict(d["incidents"]),
            conformal=[AdaptiveConformal.from_dict(c) for c in d["conformal"]],
            drift=ResidualDriftMonitor.from_dict(d["drift"]),
            admission=TrainingAdmission.from_dict(d["admission"]),
            pending=None if pending is None else PendingForecast(pending[0], pending[1]),
            hidden=d.get("hidden"),
            hidden_version=d.get("hidden_version"),
            last_ts=d.get("last_ts"),
            interval=d.get("interval"),
            events=d.get("events", 0),
            partition=d.get("partition"),
            offset=d.get("offset"),
            recent=deque(d.get("recent", []), maxlen=CONTEXT_VALUES),
        )
