"""Which events may become fine-tuning examples: anomaly-aware training admission.

A model fine-tuned on an incident learns the incident as normal and stops flagging the next one,
so events the detector flags are kept out of the replay buffer. But a series can also move to a
new level for good (a sensor recalibrated, a price regime changed); flagging that forever and never
learning it would turn a single change into an endless alert. So when one key stays flagged for
``readmit_after`` events in a row, the shift is treated as the new normal and its examples are
admitted again, until an unflagged event ends the streak.

One instance per key; the state is a couple of integers, JSON-able for the stream's Redis store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Self


@dataclass
class TrainingAdmission:
    """Per-key gate in front of the replay buffer.

    ``readmit_after`` is the length of a flagged streak after which examples are admitted again
    (``TrainingConfig.level_shift_readmit_after``); 0 admits everything, i.e. turns the gate off.
    """

    readmit_after: int
    streak: int = 0  # flagged events in a row, ending with the latest one
    withheld: int = 0  # examples kept out so far (for metrics and debugging)

    def __post_init__(self) -> None:
        if self.readmit_after < 0:
            raise ValueError(f"readmit_after must be >= 0, got {self.readmit_after}")

    def admit(self, flagged: bool) -> bool:
        """Record one event of this key; True if its example may go into the replay buffer."""
        if not flagged:
            self.streak = 0
            return True
        self.streak += 1
        if self.streak >= self.readmit_after:
            return True
        self.withheld += 1
        return False

    @property
    def in_level_shift(self) -> bool:
        """True while a flagged streak is long enough to be learned as the new normal."""
        return self.readmit_after > 0 and self.streak >= self.readmit_after

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        return cls(
            readmit_after=int(d["readmit_after"]),
            streak=int(d.get("streak", 0)),
            withheld=int(d.get("withheld", 0)),
        )
