"""Scores → incidents: one alert per episode, not one per high score.

An incident opens when the score reaches ``threshold`` and stays open until the score falls
below ``clear_threshold`` (hysteresis), so a score hovering around the threshold cannot flap.
After an incident closes, ``cooldown_events`` further events cannot open a new one, and a new
key raises nothing during its first ``warmup_events`` events while its scorer is still learning.

Severity is relative to the threshold, in tail terms (``p = 1 - score``, ``p0 = 1 - threshold``):
``critical`` when ``p <= p0 / critical_factor``, ``warning`` when ``p <= p0 / warning_factor``,
else ``info``. With the defaults (threshold 0.99, factors 10 and 100) that is info from 0.99,
warning from 0.999, critical from 0.9999. An "opened" event is graded by the score that opened
it; the "resolved" event by the incident's peak.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from vigil.models.state_codec import persistent

__all__ = ["IncidentDetector", "IncidentEvent", "Severity", "incident_id"]

Severity = Literal["info", "warning", "critical"]
SEVERITY_ORDER: tuple[Severity, ...] = ("info", "warning", "critical")


def incident_id(key: str, start: float) -> str:
    """Same key and start time → same id, so a replay dedupes against the alerts it re-raises."""
    digest = hashlib.blake2b(f"{key}\x1f{float(start)!r}".encode(), digest_size=8)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """A change of an incident's state; maps onto ``vigil.records.Alert`` (opened = firing)."""

    kind: Literal["opened", "resolved"]
    incident_id: str
    key: str
    start: float
    end: float | None
    peak: float
    severity: Severity
    score: float  # the score of the event that caused this change

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@persistent
class IncidentDetector:
    """Per-key incident state machine: ``update(score, ts)`` returns an event on open/close."""

    __state__ = (
        "events_seen",
        "cooldown_left",
        "incident_id",
        "start",
        "peak",
        "opening_score",
    )

    def __init__(
        self,
        key: str,
        threshold: float = 0.99,
        clear_threshold: float = 0.9,
        cooldown_events: int = 10,
        warmup_events: int = 64,
        warning_factor: float = 10.0,
        critical_factor: float = 100.0,
    ) -> None:
        if not 0.0 < clear_threshold < threshold < 1.0:
            raise ValueError(
                f"need 0 < clear_threshold < threshold < 1, got {clear_threshold} and {threshold}"
            )
        if cooldown_events < 0 or warmup_events < 0:
            raise ValueError("cooldown_events and warmup_events must be >= 0")
        if not 1.0 <= warning_factor <= critical_factor:
            raise ValueError("need 1 <= warning_factor <= critical_factor")
        self.key = key
        self.threshold = threshold
        self.clear_threshold = clear_threshold
        self.cooldown_events = cooldown_events
        self.warmup_events = warmup_events
        self.warning_factor = warning_factor
        self.critical_factor = critical_factor
        self.events_seen = 0
        self.cooldown_left = 0
        self.incident_id: str | None = None
        self.start: float | None = None
        self.peak = 0.0
        self.opening_score = 0.0

    @property
    def active(self) -> bool:
        return self.incident_id is not None

    def severity(self, score: float) -> Severity:
        """Grade a score by how far past the threshold it is, in tail probability."""
        tail = 1.0 - score
        base = 1.0 - self.threshold
        if tail <= base / self.critical_factor:
            return "critical"
        if tail <= base / self.warning_factor:
            return "warning"
        return "info"

    def update(self, score: float, ts: float) -> IncidentEvent | None:
        """Feed one event's score; NaN scores are ignored (they count for nothing)."""
        score = float(score)
        if math.isnan(score):
            return None
        score = min(1.0, max(0.0, score))
        self.events_seen += 1
        if self.active:
            self.peak = max(self.peak, score)
            if score < self.clear_threshold:
                return self._resolve(score, ts)
            return None
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            return None
        if self.events_seen <= self.warmup_events or score < self.threshold:
            return None
        return self._open(score, ts)

    def _open(self, score: float, ts: float) -> IncidentEvent:
        self.incident_id = incident_id(self.key, ts)
        self.start = float(ts)
        self.peak = score
        self.opening_score = score
        return IncidentEvent(
            kind="opened",
            incident_id=self.incident_id,
            key=self.key,
            start=self.start,
            end=None,
            peak=score,
            severity=self.severity(score),
            score=score,
        )

    def _resolve(self, score: float, ts: float) -> IncidentEvent:
        assert self.incident_id is not None and self.start is not None
        event = IncidentEvent(
            kind="resolved",
            incident_id=self.incident_id,
            key=self.key,
            start=self.start,
            end=float(ts),
            peak=self.peak,
            severity=self.severity(self.peak),
            score=score,
        )
        self.incident_id = None
        self.start = None
        self.peak = 0.0
        self.opening_score = 0.0
        self.cooldown_left = self.cooldown_events
        return event
