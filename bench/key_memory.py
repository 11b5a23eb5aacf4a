"""Memory a key costs a worker, and the bytes of its saved state: the figures a cluster is sized by.

Keys go through the stream's own ``SeriesProcessor`` (the replay harness, training off) until
their windows are full; Python's allocator is traced around them (``tracemalloc`` sees numpy's
buffers too), so the figure is what the per-key objects hold, not the process's RSS, which also
holds torch, Faust and the allocator's slack.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from dataclasses import dataclass

import numpy as np

from vigil.bench.replay_harness import ReplayHarness
from vigil.settings import ModelGroup


@dataclass(frozen=True)
class KeyMemory:
    keys: int
    events_per_key: int
    bytes_in_memory_per_key: float
    state_json_bytes_per_key: float
    model_parameters: int

    @property
    def model_bytes(self) -> int:
        return self.model_parameters * 4  # float32


def measure_key_memory(
    group: ModelGroup | None = None, *, keys: int = 2000, events_per_key: int = 200
) -> KeyMemory:
    """Traced bytes per key after ``events_per_key`` readings each (random walks, one a minute)."""
    group = group or ModelGroup(name="default")
    rng = np.random.default_rng(0)
    stamps = 1.7e9 + 60.0 * np.arange(events_per_key)
    with ReplayHarness(group, train=False) as harness:
        # one key first, so lazily built objects (caches, the model's buffers) are not counted
        harness.process(harness.events(stamps, rng.normal(size=events_per_key), key="warm-up"))
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for k in range(keys):
                values = rng.normal(size=events_per_key).cumsum()
                harness.process(harness.events(stamps, values, key=f"key-{k}"))
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        sample = [state for key, state in harness.states.items() if key != "warm-up"][:200]
        state_bytes = float(np.mean([len(json.dumps(s.to_dict())) for s in sample]))
        parameters = sum(p.numel() for p in harness.engine.model.parameters())
    return KeyMemory(keys, events_per_key, (after - before) / keys, state_bytes, parameters)
