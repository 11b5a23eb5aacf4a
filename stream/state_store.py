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
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from vigil.records import Prediction

HISTORY_POINTS = 500  # recent predictions kept per key for charts (approximate cap)
HISTORY_TTL_S = 7 * 86_400  # a key's history expires a week after its last prediction


@dataclass(frozen=True)
class StateWrite:
    """One batch's Redis write, already encoded: states by Redis key, latest prediction by
    series key, and chart points (series key, stream id, point) in time order."""

    states: dict[str, bytes]
    latest: dict[str, bytes]
    history: list[tuple[str, str, bytes]] = field(default_factory=list)


def history_point(prediction: Prediction) -> dict[str, Any]:
    """What a chart needs of one prediction: the observation, the one-step-ahead forecast and
    its interval (made at this point, for the next one), score, anomaly flag, model version."""
    return {
        "t": prediction.timestamp,
        "y": prediction.observed,
        "f": prediction.forecast[0] if prediction.forecast else None,
        "l": prediction.lower[0] if prediction.lower else None,
        "u": prediction.upper[0] if prediction.upper else None,
        "s": prediction.score,
        "a": prediction.anomaly,
        "v": prediction.provenance.model_version,
    }


def history_id(ts: float) -> str:
    """A point's stream id: its data time in ms (sequence 1, so time 0 is still valid). A
    redelivered prediction has the same id and Redis refuses it: no point is doubled."""
    return f"{max(0, int(ts * 1000))}-1"


class StateStore:
    def __init__(
        self,
        client: aioredis.Redis,
        app_id: str,
        *,
        state_ttl_s: float = 0.0,
        history: bool = False,
    ):
        self.client = client
        self.prefix = f"vigil:{app_id}"
        self.state_ttl_s = state_ttl_s  # 0: states never expire
        self.history = history  # keep recent predictions per key (VIGIL_WEB_HISTORY)
        self.predictions_hash = f"{self.prefix}:predictions"

    def history_key(self, key: str) -> str:
        return f"{self.prefix}:ui:history:{key}"

    def state_key(self, group: str, key: str) -> str:
        return f"{self.prefix}:state:{group}:{key}"

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
        predictions: list[Prediction] | None = None,
    ) -> StateWrite:
        """States by (group, key), the latest prediction JSON by series key and (with history
        on) each prediction's chart point, ready to write."""
        encoded = {self.state_key(g, k): orjson.dumps(state) for (g, k), state in states.items()}
        points = [
            (p.key, history_id(p.timestamp), orjson.dumps(history_point(p)))
            for p in (predictions or [])
            if self.history
        ]
        return StateWrite(encoded, dict(latest), points)

    async def write(self, batch: StateWrite) -> None:
        """One pipelined transaction: states, latest predictions and chart points land together
        (a chart point Redis refuses as not newer than the last is a replay, and is skipped)."""
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
            commands = len(pipe.command_stack)
            for key, entry, point in batch.history:
                pipe.xadd(self.history_key(key), {"p": point}, id=entry,
                          maxlen=HISTORY_POINTS, approximate=True)  # fmt: skip
            for key in dict.fromkeys(k for k, _, _ in batch.history):
                pipe.expire(self.history_key(key), HISTORY_TTL_S)
            results = await pipe.execute(raise_on_error=False)
        for result in results[:commands]:  # states and latest predictions must land
            if isinstance(result, Exception):
                raise result
        for result in results[commands:]:  # a chart point refused as not newer is a replay
            if isinstance(result, Exception) and not _replayed_point(result):
                raise result

    async def latest_prediction(self, key: str) -> dict[str, Any] | None:
        raw = await self.client.hget(self.predictions_hash, key)
        return json.loads(raw) if raw else None


def _replayed_point(error: Exception) -> bool:
    return isinstance(error, ResponseError) and "equal or smaller" in str(error)
