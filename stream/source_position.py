"""Where a record came from: the one type every part of the worker uses to name an input record.

A key's state remembers, per source topic-partition, the newest offset it has absorbed. Keying by
topic as well as partition matters: a group that reads two topics sees the same partition
numbers with unrelated offsets on each.
"""

from __future__ import annotations

from typing import NamedTuple


class SourcePosition(NamedTuple):
    topic: str
    partition: int
    offset: int

    @property
    def source(self) -> str:
        """The topic-partition as one string (a JSON object key in stored state)."""
        return f"{self.topic}:{self.partition}"
