"""Where a file replay stopped, kept in Redis so a rerun continues after the last acked record.

A checkpoint is only written after the producer has flushed, so everything at or before
``line`` is in Kafka; a rerun skips those lines and resends nothing that was acknowledged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

from redis.asyncio import Redis


def checkpoint_key(app_id: str, path: Path) -> str:
    """``vigil:{app_id}:replay:{hash}``: one key per absolute path, whatever its length."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    return f"vigil:{app_id}:replay:{digest}"


@dataclass(frozen=True)
class ReplayCheckpoint:
    """Progress through one file: ``line`` is a CSV line number (header = 1) or a Parquet row
    number (first row = 1); ``offset`` is the byte just after that CSV line, so a resume seeks
    instead of rereading."""

    path: str
    line: int
    offset: int
    readings: int
    dead_letters: int
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        return cls(
            path=str(d["path"]),
            line=int(d["line"]),
            offset=int(d.get("offset", 0)),
            readings=int(d.get("readings", 0)),
            dead_letters=int(d.get("dead_letters", 0)),
            updated_at=float(d.get("updated_at", 0.0)),
        )


class CheckpointStore:
    """Replay checkpoints in Redis (namespaced by app id, so tests and deployments never mix)."""

    def __init__(self, redis: Redis, app_id: str) -> None:
        self.redis = redis
        self.app_id = app_id

    def key(self, path: Path) -> str:
        return checkpoint_key(self.app_id, path)

    async def load(self, path: Path) -> ReplayCheckpoint | None:
        raw = await self.redis.get(self.key(path))
        if raw is None:
            return None
        return ReplayCheckpoint.from_dict(json.loads(raw))

    async def save_many(self, checkpoints: list[ReplayCheckpoint]) -> None:
        """Write several files' progress in one round trip."""
        if not checkpoints:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for cp in checkpoints:
                pipe.set(self.key(Path(cp.path)), json.dumps(cp.to_dict()))
            await pipe.execute()

    async def clear(self, path: Path) -> None:
        await self.redis.delete(self.key(path))
