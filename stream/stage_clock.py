"""Per-stage timing of one batch, into the ``vigil_handle_stage_seconds`` histogram."""

from __future__ import annotations

import time
from typing import Any


class StageClock:
    """Times the stages of one batch into a histogram labelled by stage (a stage that runs
    once per model group adds up over the groups)."""

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram
        self.started = self.mark = time.monotonic()
        self.spent: dict[str, float] = {}

    def resume(self) -> None:
        """The next stage starts now; time since the last one belongs to none."""
        self.mark = time.monotonic()

    def done(self, stage: str) -> None:
        now = time.monotonic()
        self.spent[stage] = self.spent.get(stage, 0.0) + now - self.mark
        self.mark = now

    def total(self, name: str) -> float:
        """Observe every stage and the whole batch (as ``name``); the whole batch's seconds."""
        whole = time.monotonic() - self.started
        for stage, seconds in self.spent.items():
            self.histogram.labels(stage).observe(seconds)
        self.histogram.labels(name).observe(whole)
        return whole
