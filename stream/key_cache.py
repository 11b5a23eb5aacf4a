"""The worker's per-key states: in memory while a key is active, from Redis on first sight.

Memory stays bounded by the keys that are active, not by every key ever seen: a key unseen for
``stream.idle_key_evict_s`` leaves memory (its state is already in Redis, written after its last
batch) and is loaded again when it comes back. A stored state that cannot be decoded is set
aside in Redis and the key restarts fresh: one bad state never fails every batch it is in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import orjson

from vigil.stream.key_state import KeyState
from vigil.stream.metrics import VigilMetrics
from vigil.stream.state_store import StateStore

log = logging.getLogger("vigil.keys")


class KeyStateCache:
    def __init__(
        self,
        store: StateStore,
        metrics: VigilMetrics,
        groups: Iterable[str],
        *,
        evict_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.evict_after_s = evict_after_s
        self.clock = clock
        self.states: dict[str, dict[str, KeyState]] = {g: {} for g in groups}
        self.seen: dict[str, dict[str, float]] = {g: {} for g in self.states}

    def of(self, group: str) -> dict[str, KeyState]:
        """The group's states by key: the processor reads and fills this dict in place."""
        return self.states[group]

    async def load(self, group: str, keys: Iterable[str]) -> None:
        """Bring the stored state of every key not yet in memory (one Redis round trip)."""
        states, now = self.states[group], self.clock()
        unknown = sorted({k for k in keys if k not in states})
        for key, raw in (await self.store.load_raw(group, unknown)).items():
            try:
                states[key] = KeyState.from_dict(orjson.loads(raw))
            except Exception as exc:
                aside = await self.store.quarantine(group, key, raw, f"{type(exc).__name__}: {exc}")
                self.metrics.states_quarantined.labels(group).inc()
                log.error("group %s: stored state of key %r cannot be loaded (%s); set aside as"
                          " %s, the key restarts fresh", group, key, exc, aside)  # fmt: skip
        seen = self.seen[group]
        for key in keys:
            seen[key] = now
        self.metrics.keys_in_memory.labels(group).set(len(states))

    def forget(self, group: str, keys: Iterable[str]) -> None:
        """Drop keys from memory (their next batch reloads the saved state)."""
        for key in keys:
            self.states[group].pop(key, None)
            self.seen[group].pop(key, None)

    def forget_sources(self, sources: set[str]) -> None:
        """Drop every key fed by a revoked ``topic:partition``: its new owner loads it."""
        for group, states in self.states.items():
            gone = [k for k, s in states.items() if sources.intersection(s.positions)]
            self.forget(group, gone)
            self.metrics.keys_in_memory.labels(group).set(len(states))

    def evict_idle(self) -> int:
        """Drop keys idle for ``evict_after_s``; call only when no batch is between its
        processing and its state write (else a reload could read an older state)."""
        if self.evict_after_s <= 0:
            return 0
        horizon, evicted = self.clock() - self.evict_after_s, 0
        for group, seen in self.seen.items():
            idle = [k for k, t in seen.items() if t < horizon]
            self.forget(group, idle)
            evicted += len(idle)
            if idle:
                self.metrics.keys_evicted.labels(group).inc(len(idle))
            self.metrics.keys_in_memory.labels(group).set(len(self.states[group]))
        return evicted
