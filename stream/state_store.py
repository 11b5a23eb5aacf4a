"""Per-key state, latest predictions and alerts in Redis — written in pipelined batches.

State is what lets a partition move to another worker, or a worker restart, without replaying
history: a key's window, normaliser and detector state are loaded the first time the key is
seen and written back after every batch whose outputs have been delivered to Kafka.

A batch's write is encoded first (:meth:`StateStore.encode`, while Kafka is still acknowledging
the outputs) and sent after (:meth:`StateStore.write`). States are strict JSON
(:mod:`vigil.models.state_codec` tags non-finite numbers), encoded with orjson: a key's state
holds a few hundred floats, which the standard library's encoder turns into text about 14 times
slower, and at a few events per key per batch that encoding was the largest cost of saving state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis


@dataclass(frozen=True)
class StateWrite:
    """One batch's Redis write, already encoded: states by Redis key, latest prediction by
    series key."""

    states: dict[str, bytes]
    latest: dict[str, bytes]


class StateStore:
    def __init__(
        self,
        client: aioredis.Redis,
        app_id: str,
        *,
        state_ttl_s: float = 0.0,
    ):
        self.client = client
        self.prefix = f"vigil:{app_id}"
        self.state_ttl_s = state_ttl_s  # 0: states never expire
        self.predictions_hash = f"{self.prefix}:predictions"

    def state_key(self, group: str, key: str) -> str:
        return f"{self.prefix}:state:{group}:{key}"

    async def load_states(self, group: str, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The stored state of each key that has one (one round trip)."""
        raw = await self.load_raw(group, keys)
        return {k: orjson.loads(v) for k, v in raw.items()}

    async def load_raw(self, group: str, keys: list[str]) -> dict[str, bytes]:
        """The stored, still encoded state of each key that has one (one round trip)."""
        if not keys:
            return {}
        raw = await self.client.mget([self.state_key(group, k) for k in keys])
        return {k: v for k, v in zip(keys, raw, strict=True) if isinstance(v, bytes)}

    async def quarantine(self, group: str, key: str, raw: bytes, reason: str) -> str:
        """Set a state that cannot be loaded aside (kept 30 days for a post-mortem) and drop it,
        so the key restarts fresh instead of failing every batch it is in."""
        aside = f"{self.prefix}:quarantine:{group}:{key}"
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(aside, mapping={"state": raw, "reason": reason[:1000]})
            pipe.expire(aside, 30 * 86_400)
            pipe.delete(self.state_key(group, key))
            await pipe.execute()
        return aside

    def encode(
        self,
        states: Mapping[tuple[str, str], dict[str, Any]],
        latest: Mapping[str, bytes],
    ) -> StateWrite:
        """States by (group, key) and the latest prediction JSON by series key, ready to write."""
        encoded = {self.state_key(g, k): orjson.dumps(state) for (g, k), state in states.items()}
        return StateWrite(encoded, dict(latest))

    async def write(self, batch: StateWrite) -> None:
        """One pipelined transaction: states and latest predictions land together or not."""
        if not batch.states and not batch.latest:
            return
        async with self.client.pipeline(transaction=True) as pipe:
            if batch.states and self.state_ttl_s > 0:
                ttl = max(1, int(self.state_ttl_s))
                for name, value in batch.states.items():
                    pipe.set(name, value, ex=ttl)  # an idle key's state expires on its own
            elif batch.states:
                pipe.mset(batch.states)
            if batch.latest:
                latest: dict[Any, Any] = batch.latest  # redis-py's Mapping is invariant
                pipe.hset(self.predictions_hash, mapping=latest)
            await pipe.execute()

    async def latest_prediction(self, key: str) -> dict[str, Any] | None:
        raw = await self.client.hget(self.predictions_hash, key)
        return json.loads(raw) if raw else None
