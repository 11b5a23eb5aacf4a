"""StateStore against the real Redis: a key's state, written the way the agent writes it
(encoded while Kafka acknowledges, then one pipelined transaction), restores to a key that
carries on exactly as the original."""

from __future__ import annotations

import math

import orjson
import redis.asyncio as aioredis

from tests.test_series_processor import PersistencePredictor, events, group, wave
from vigil.settings import VigilSettings
from vigil.stream.key_state import KeyState
from vigil.stream.series_processor import SeriesProcessor
from vigil.stream.state_store import HISTORY_TTL_S, StateStore


async def test_states_and_latest_predictions_round_trip_through_redis(
    settings: VigilSettings,
) -> None:
    processor = SeriesProcessor(group(), PersistencePredictor(), lambda: "v1")
    values: list[float | None] = list(wave(80))
    values[30] = None  # a missing value and a spike: every estimator has something to keep
    values[50] = 1e3
    states: dict[str, KeyState] = {}
    out = await processor.process(events("a", values) + events("b", wave(40, 1)), states)

    client = aioredis.Redis.from_url(settings.redis)
    store = StateStore(client, settings.app_id)
    try:
        latest = {p.key: p.model_dump_json().encode() for p in out.predictions}
        write = store.encode({("g", k): states[k].to_dict() for k in out.touched}, latest)
        assert set(write.states) == {store.state_key("g", "a"), store.state_key("g", "b")}
        await store.write(write)
        loaded = {
            k: orjson.loads(v)
            for k, v in (await store.load_raw("g", ["a", "b", "never-seen"])).items()
        }
        newest_a = await store.latest_prediction("a")
    finally:
        await client.delete(*write.states, store.predictions_hash)
        await client.aclose()

    assert set(loaded) == {"a", "b"}  # an unknown key has no state
    assert loaded["a"] == states["a"].to_dict()
    newest = max(p.timestamp for p in out.predictions if p.key == "a")
    assert newest_a is not None and newest_a["timestamp"] == newest

    # the restored key and the original go on identically
    restored = {"a": KeyState.from_dict(loaded["a"])}
    more = events("a", wave(20, 2), start=80)
    original_out = await processor.process(more, states)
    restored_out = await processor.process(more, restored)
    pairs = zip(original_out.predictions, restored_out.predictions, strict=True)
    for original, again in pairs:
        assert math.isclose(original.score, again.score, rel_tol=1e-9)
        assert original.forecast == again.forecast and original.upper == again.upper
    assert restored["a"].to_dict() == states["a"].to_dict()


async def test_chart_points_are_written_with_the_states_and_replays_are_not_doubled(
    services: VigilSettings, run_id: str
) -> None:
    """With history on, each prediction's chart point lands in the same transaction as the
    states; writing the same batch again (a redelivery) leaves one point per prediction."""
    client = aioredis.Redis.from_url(services.redis)
    store = StateStore(client, f"vigil-test-{run_id}", history=True)
    try:
        processor = SeriesProcessor(group(), PersistencePredictor(), lambda: "v1")
        states: dict = {}
        out = await processor.process(events("a", wave(30)), states)
        write = store.encode(
            {("g", "a"): states["a"].to_dict()},
            {"a": out.predictions[-1].model_dump_json().encode()},
            out.predictions,
        )
        await store.write(write)
        await store.write(write)  # replayed: Redis refuses the points, the states still land
        entries = await client.xrange(store.history_key("a"))
        assert len(entries) == len(out.predictions) > 0
        first = orjson.loads(entries[0][1][b"p"])
        assert first["t"] == out.predictions[0].timestamp and first["v"] == "v1"
        assert 0 < await client.ttl(store.history_key("a")) <= HISTORY_TTL_S
    finally:
        await client.aclose()
