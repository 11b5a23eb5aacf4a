"""Which events may become fine-tuning examples: anomaly-aware training admission.

A model fine-tuned on an incident learns the incident as normal and stops flagging the next one,
so events the detector flags are kept out of the replay buffer. But a series can also move to a
new level for good (a sensor recalibrated, a price regime changed); flagging that forever and never
learning it would turn a single change into an endless alert. So when one key stays flagged for
``readmit_after`` events in a row, the shift is treated as the new normal and its examples are
admitted again, until an unflagged event ends the streak.

One instance per key; the state is a couple of integers (see :mod:`vigil.models.state_codec`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from vigil.models.state_codec import persistent


@persistent
@dataclass
class TrainingAdmission:
    """Per-key gate in front of the replay buffer.

    ``readmit_after`` is the length of a flagged streak after which examples are admitted again
    (the stream passes ``TrainingConfig.level_shift_readmit_after``); 0 admits everything, i.e.
    turns the gate off.
    """

    __state__: ClassVar[tuple[str, ...]] = ("streak", "withheld")

    readmit_after: int
    streak: int = field(default=0, init=False)  # flagged events in a row, ending with the latest
    withheld: int = field(default=0, init=False)  # examples kept out so far (metrics, debugging)

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
