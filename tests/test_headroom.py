"""Loop headroom: busy share, handled and sustainable rates, the trainer's share (fake clocks)."""

from __future__ import annotations

import pytest

from vigil.stream.headroom import Headroom, LoopHeadroom


def test_busy_share_and_sustainable_rate_follow_the_clocks() -> None:
    cpu, wall = [0.0], [0.0]
    headroom = LoopHeadroom(smoothing=1.0, cpu_clock=lambda: cpu[0], wall_clock=lambda: wall[0])
    cpu[0], wall[0] = 0.25, 1.0  # a quarter of a second of CPU per second
    seen = headroom.sample(events_total=500)
    assert seen.busy == pytest.approx(0.25)
    assert seen.handled_per_s == pytest.approx(500)
    assert seen.sustainable_per_s == pytest.approx(2000)  # 500/s at 25% busy


def test_an_idle_loop_claims_no_sustainable_rate() -> None:
    headroom = LoopHeadroom(cpu_clock=lambda: 0.0, wall_clock=iter(range(10)).__next__)
    assert headroom.sample(events_total=0).sustainable_per_s is None


def test_the_trainer_yields_as_the_loop_fills() -> None:
    assert Headroom(0.3, 100, 333).training_share(0.25) == 0.25
    assert Headroom(0.75, 100, 133).training_share(0.25) == pytest.approx(0.125)
    assert Headroom(1.0, 100, 100).training_share(0.25) == pytest.approx(0.025)
    shares = [Headroom(b / 10, 1, 1).training_share(0.5) for b in range(11)]
    assert shares == sorted(shares, reverse=True)
