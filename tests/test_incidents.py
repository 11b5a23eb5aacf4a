"""IncidentDetector: hysteresis, cooldown, warm-up, deterministic ids, severity, round-trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.models.incidents import IncidentDetector, IncidentEvent, incident_id
from vigil.models.state_codec import dumps, loads


def feed(
    detector: IncidentDetector, scores: list[float], t0: float = 1000.0
) -> list[IncidentEvent]:
    events = []
    for i, score in enumerate(scores):
        event = detector.update(score, t0 + i)
        if event is not None:
            events.append(event)
    return events


def detector(**kwargs: float) -> IncidentDetector:
    options = {"threshold": 0.99, "clear_threshold": 0.9, "cooldown_events": 5, "warmup_events": 0}
    options.update(kwargs)
    return IncidentDetector("sensor-1", **options)  # type: ignore[arg-type]


def test_one_incident_spanning_many_high_scores_flags_once() -> None:
    scores = [0.1] * 10 + [0.995, 0.999, 0.95, 0.97, 0.9999, 0.92, 0.991] * 6 + [0.5] + [0.2] * 5
    d = detector()
    events = feed(d, scores)
    assert [e.kind for e in events] == ["opened", "resolved"]
    opened, resolved = events
    assert opened.incident_id == resolved.incident_id
    assert opened.start == resolved.start == 1010.0
    assert resolved.end == 1010.0 + 42
    assert resolved.peak == 0.9999
    assert opened.end is None
    assert not d.active


def test_hovering_between_thresholds_keeps_incident_open() -> None:
    d = detector()
    feed(d, [0.995])
    assert d.active
    assert feed(d, [0.91, 0.95, 0.989] * 20, t0=2000.0) == []
    assert d.active


def test_cooldown_suppresses_reopening() -> None:
    d = detector(cooldown_events=5)
    events = feed(d, [0.995, 0.1] + [0.999] * 5 + [0.999])
    assert [e.kind for e in events] == ["opened", "resolved", "opened"]
    assert events[2].start == 1000.0 + 7  # the first high score after five cooled-down events


def test_warmup_never_alerts() -> None:
    d = detector(warmup_events=20)
    events = feed(d, [0.9999] * 20)
    assert events == [] and not d.active
    event = d.update(0.9999, 5000.0)
    assert event is not None and event.kind == "opened"


def test_ids_are_deterministic_per_key_and_start() -> None:
    scores = [0.1, 0.995, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.999, 0.1]
    first = feed(detector(), scores)
    replay = feed(detector(), scores)
    assert [e.incident_id for e in first] == [e.incident_id for e in replay]
    assert first[0].incident_id != first[2].incident_id
    assert first[0].incident_id == incident_id("sensor-1", 1001.0)
    other_key = IncidentDetector("sensor-2", cooldown_events=5, warmup_events=0)
    assert feed(other_key, scores)[0].incident_id != first[0].incident_id


@pytest.mark.parametrize(
    ("score", "severity"),
    [
        (0.99, "info"),
        (0.995, "info"),
        (0.9991, "warning"),
        (0.99991, "critical"),
        (1.0, "critical"),
    ],
)
def test_severity_from_opening_score(score: float, severity: str) -> None:
    event = detector().update(score, 1.0)
    assert event is not None and event.severity == severity


def test_resolved_severity_comes_from_peak() -> None:
    events = feed(detector(), [0.995, 0.99999, 0.95, 0.3])
    assert events[0].severity == "info"
    assert events[1].severity == "critical" and events[1].peak == 0.99999


def test_nan_scores_are_ignored() -> None:
    d = detector(warmup_events=2)
    feed(d, [math.nan] * 10)
    assert d.events_seen == 0
    assert feed(d, [0.999, 0.999, 0.999])[0].start == 1002.0


def test_validation() -> None:
    with pytest.raises(ValueError, match="clear_threshold"):
        IncidentDetector("k", threshold=0.9, clear_threshold=0.95)


scores_strategy = st.lists(
    st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.995, 0.9999, 0.5, math.nan, 2.0, -1.0])),
    max_size=200,
)


@settings(max_examples=80, deadline=None)
@given(scores_strategy, st.integers(0, 199))
def test_events_alternate_and_roundtrip_replays_identically(
    scores: list[float], split: int
) -> None:
    original = detector(cooldown_events=3, warmup_events=4)
    before = feed(original, scores[:split])
    restored = loads(dumps(original), IncidentDetector)
    after_original = feed(original, scores[split:], t0=5000.0)
    after_restored = feed(restored, scores[split:], t0=5000.0)
    assert after_original == after_restored
    events = before + after_original
    for i, event in enumerate(events):
        assert event.kind == ("opened" if i % 2 == 0 else "resolved")
        if event.kind == "resolved":
            assert event.incident_id == events[i - 1].incident_id
            assert event.peak >= events[i - 1].peak
    assert original.active == (len(events) % 2 == 1)
