"""The pipeline benchmark runs end to end on the real Kafka and Redis (tiny traffic, small model),
and the Prometheus bucket maths it reports with. No timing is asserted: figures are only printed
by ``vigil bench pipeline``."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
import redis
from aiokafka.admin import AIOKafkaAdminClient

from vigil.bench.pipeline import PipelinePlan, run_pipeline_bench
from vigil.bench.prometheus_histogram import BucketCounts, histogram, sample_total
from vigil.settings import ModelConfig, ModelGroup, TrainingConfig, VigilSettings
from vigil.stream.backpressure import InWorkerLimit

EXPOSITION = """\
# HELP demo_seconds A demo histogram.
# TYPE demo_seconds histogram
demo_seconds_bucket{le="0.01"} 10.0
demo_seconds_bucket{le="0.1"} 90.0
demo_seconds_bucket{le="1.0"} 100.0
demo_seconds_bucket{le="+Inf"} 100.0
demo_seconds_count 100.0
demo_seconds_sum 4.0
# HELP demo_pauses_total Pauses.
# TYPE demo_pauses_total counter
demo_pauses_total 3.0
"""


def test_quantiles_interpolate_inside_the_bucket_that_holds_the_rank() -> None:
    counts = histogram(EXPOSITION, "demo_seconds")
    assert counts.count == 100 and counts.mean == pytest.approx(0.04)
    assert counts.quantile(0.5) == pytest.approx(0.01 + 0.09 * 40 / 80)  # 40 of the 80 in (.01, .1]
    assert counts.quantile(0.95) == pytest.approx(0.1 + 0.9 * 5 / 10)
    assert counts.fraction_at_most(0.1) == pytest.approx(0.9)
    assert sample_total(EXPOSITION, "demo_pauses_total") == 3


def test_a_phase_is_the_difference_of_two_scrapes_and_the_inf_bucket_reports_its_floor() -> None:
    before = BucketCounts((0.1, 1.0, math.inf), (5.0, 5.0, 5.0))
    after = BucketCounts((0.1, 1.0, math.inf), (5.0, 5.0, 15.0))
    phase = after.minus(before)
    assert phase.count == 10
    assert phase.quantile(0.99) == 1.0  # everything beyond the last finite bound
    assert math.isnan(BucketCounts((1.0, math.inf), (0.0, 0.0)).quantile(0.5))
    with pytest.raises(ValueError):
        after.minus(BucketCounts((0.5, math.inf), (1.0, 1.0)))


def test_the_in_worker_limit_admits_what_the_worker_finishes_within_the_target() -> None:
    """The overload figures rest on this: at most target x rate events inside the worker."""
    limit = InWorkerLimit(0.05, floor=16, ceiling=1000)
    assert limit.limit == 1000  # nothing measured yet
    limit.record(400, 0.5)  # 800 events/s
    assert limit.limit == 40  # 50 ms of work
    assert limit.full(40) and not limit.full(39)
    assert limit.drained(20) and not limit.drained(21)
    limit.record(10, 1.0)  # a slow batch pulls the smoothed rate down, not below the floor
    assert 16 <= limit.limit < 40
    for _ in range(50):
        limit.record(100_000, 1.0)
    assert limit.limit == 1000  # never above the ceiling
    with pytest.raises(ValueError):
        InWorkerLimit(0.05, floor=0, ceiling=10)


@pytest.mark.services
@pytest.mark.timeout(150)
def test_small_pipeline_run_measures_every_phase_and_loses_nothing(
    services: VigilSettings, redis_client: redis.Redis
) -> None:
    group = ModelGroup(
        name="smoke",
        model=ModelConfig(hidden_size=8, num_layers=1, window=8),
        training=TrainingConfig(min_examples=16, holdout_size=8, batch_size=8, steps_per_round=2),
    )
    plan = PipelinePlan(
        keys=8,
        events_per_key=100,
        latency_seconds=2.0,
        overload_seconds=2.0,
        group=group,
        timeout_s=60.0,
        workers=2,
    )
    result = run_pipeline_bench(services, plan)
    data = json.loads(json.dumps(result.to_json()))  # what --json prints as its last line

    for key in ("passthrough", "vigil", "latency", "overload", "ratio", "targets", "lost_events"):
        assert key in data
    assert data["passthrough"]["events_per_s"] > 0 and data["vigil"]["events_per_s"] > 0
    assert data["passthrough"]["records"] == 8 * 100  # every reading forwarded
    assert data["vigil"]["records"] == 8 * (100 - 8 + 1)  # one prediction once a window is full
    assert data["ratio"] > 0
    # two workers side by side drain the same backlog between them, nothing lost or doubled
    assert data["workers"] == 2 and data["scale_out"]["events_per_s"] > 0
    assert data["scale_out"]["records"] == 8 * (100 - 8 + 1)
    assert data["scale_out"]["lost"] == 0
    assert data["redis_state_ok"], data["redis_state_detail"]

    latency = data["latency"]
    assert latency["events"] > 0 and latency["e2e_p50_ms"] > 0
    assert latency["e2e_p50_ms"] <= latency["e2e_p99_ms"] <= latency["e2e_max_ms"]
    assert latency["in_worker_p50_ms"] > 0
    assert [phase["factor"] for phase in data["overload"]] == [1.5, 2.0]
    for phase in data["overload"]:
        assert phase["produced"] > 0
        assert phase["drain_seconds"] is not None  # every reading got its prediction in time
        assert phase["in_worker_p99_ms"] >= phase["in_worker_p50_ms"] > 0
        assert phase["lost"] == 0 and phase["duplicates"] == 0
    assert data["lost_events"] == 0 and data["dead_letters"] == 0
    assert data["targets"]["no_lost_events"]["met"]

    # cleaned up: no bench topic and no Redis key of the run is left behind
    async def leftover_topics() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=services.bootstrap)
        await admin.start()
        try:
            return [t for t in await admin.list_topics() if t.startswith(f"bench-{result.run}.")]
        finally:
            await admin.close()

    assert asyncio.run(leftover_topics()) == []
    assert list(redis_client.scan_iter(f"vigil:vigil-bench-{result.run}*")) == []
