"""ResidualDriftMonitor: finds injected regime changes, stays quiet otherwise, steers the LR."""

from __future__ import annotations

import math
import random

import pytest

from vigil.models.drift import DriftSignal, PageHinkley, ResidualDriftMonitor
from vigil.models.state_codec import dumps, encode, loads


def residuals(
    seed: int, count: int, change_at: int | None = None, scale: float = 3.0
) -> list[float]:
    rng = random.Random(seed)
    return [
        rng.gauss(0.0, scale if change_at is not None and t >= change_at else 1.0)
        for t in range(count)
    ]


def signals(monitor: ResidualDriftMonitor, values: list[float]) -> list[DriftSignal]:
    found = []
    for t, value in enumerate(values):
        signal = monitor.update(value, ts=float(t))
        if signal is not None:
            found.append(signal)
    return found


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_drift_on_stationary_series(seed: int) -> None:
    assert signals(ResidualDriftMonitor(), residuals(seed, 5000)) == []


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_drift_found_soon_after_noise_triples(seed: int) -> None:
    found = signals(ResidualDriftMonitor(), residuals(seed, 3000, change_at=2000))
    assert found, "the regime change was missed"
    first = found[0]
    assert 2000 <= first.index < 2100
    assert first.ts == float(first.index)
    assert first.direction == "up" and first.method == "page_hinkley"


def test_calmer_regime_is_a_downward_drift() -> None:
    found = signals(ResidualDriftMonitor(), residuals(20, 3000, 2000, scale=0.3))
    assert found and found[0].index >= 2000 and found[0].direction == "down"


def test_single_spikes_are_not_drift() -> None:
    values = residuals(30, 3000)
    for t in range(300, 3000, 150):
        values[t] = 1e6
    assert signals(ResidualDriftMonitor(), values) == []


def test_lr_scale_rises_after_drift_then_decays_towards_floor() -> None:
    monitor = ResidualDriftMonitor(boost=5.0, floor=0.5, half_life=50.0)
    values = residuals(40, 2000, change_at=1000)
    scales = []
    drift_at = None
    for t, value in enumerate(values):
        if monitor.update(value) is not None and drift_at is None:
            drift_at = t
        scales.append(monitor.lr_scale)
    assert drift_at is not None
    assert scales[999] == pytest.approx(0.5, abs=1e-3)  # settled while stable
    assert scales[drift_at] == 5.0
    assert scales[drift_at + 50] == pytest.approx(0.5 + 4.5 / 2, rel=1e-6)  # one half-life
    assert all(a >= b for a, b in zip(scales[drift_at:], scales[drift_at + 1 :], strict=False))
    assert monitor.drifts >= 1 and monitor.last_drift is not None


def test_non_finite_residuals_are_ignored() -> None:
    monitor = ResidualDriftMonitor()
    for value in (math.nan, math.inf, -math.inf):
        assert monitor.update(value) is None
    assert monitor.index == 0 and monitor.lr_scale == 1.0


@pytest.mark.parametrize("split", [10, 1500, 2030])
def test_roundtrip_gives_identical_outputs(split: int) -> None:
    values = residuals(50, 3000, change_at=2000)
    original = ResidualDriftMonitor()
    signals(original, values[:split])
    restored = loads(dumps(original), ResidualDriftMonitor)
    for t, value in enumerate(values[split:]):
        assert restored.update(value, float(t)) == original.update(value, float(t))
        assert restored.lr_scale == original.lr_scale
    assert original.drifts >= 1


def test_page_hinkley_roundtrip_and_warmup() -> None:
    test = PageHinkley(min_instances=5)
    assert all(test.update(v) is None for v in [0.0, 100.0, -100.0, 5.0, 5.0])
    restored = loads(dumps(test), PageHinkley)
    assert encode(restored) == encode(test)


def test_huge_residuals_keep_the_state_finite() -> None:
    monitor = ResidualDriftMonitor(min_instances=5)
    for value in [1e308, -1e308, 1.0, 1e-308, *residuals(60, 200)]:
        monitor.update(value)
    assert b"$float" not in dumps(monitor)
    assert 0.5 <= monitor.lr_scale <= 5.0
