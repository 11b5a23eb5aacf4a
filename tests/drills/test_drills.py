"""The reliability drills, short forms, against the real broker and Redis (docs/reliability.md).

Each drill produces readings whose fate it knows, applies one fault and checks the broker's and
Redis's view of every record: nothing lost, nothing silently dropped, no valid reading
dead-lettered, nothing wedged, plus the drill's own checks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from vigil.bench.drills import DRILLS, DrillOutcome
from vigil.settings import VigilSettings

pytestmark = pytest.mark.services


@pytest.mark.parametrize("name", list(DRILLS))
def test_drill(name: str, services: VigilSettings, tmp_path: Path) -> None:
    outcome: DrillOutcome = asyncio.run(DRILLS[name](services, tmp_path, True))
    assert outcome.lost == 0, outcome
    assert outcome.dropped == 0, outcome
    assert outcome.valid_dead_lettered == 0, outcome
    assert not outcome.wedged, outcome
    failed = [check for check, passed in outcome.checks.items() if not passed]
    assert not failed, (failed, outcome)
    if name != "refused_record":
        assert outcome.predicted > 0 and outcome.produced >= outcome.valid > 0
    if name.startswith("redis_outage") or name == "two_topics":
        assert outcome.dead_lettered == 0  # an outage is not bad input
