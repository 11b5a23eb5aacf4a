"""BufferPressure reads Faust's per-partition flow control (pure logic over a fake consumer)."""

from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP

from stream.backpressure import BufferPressure
from stream.metrics import VigilMetrics


def test_pauses_are_counted_once_each_and_the_gauge_follows_the_buffer() -> None:
    consumer = SimpleNamespace(_buffered_partitions=set())
    metrics = VigilMetrics()
    pressure = BufferPressure(SimpleNamespace(consumer=consumer), metrics)
    assert pressure.tick() == set()
    consumer._buffered_partitions = {TP("r", 0), TP("r", 1)}
    pressure.tick()
    pressure.tick()  # still paused: not a new pause
    consumer._buffered_partitions = {TP("r", 1)}
    pressure.tick()
    consumer._buffered_partitions = {TP("r", 1), TP("r", 0)}
    pressure.tick()
    assert pressure.pauses == 3
    assert metrics.registry.get_sample_value("vigil_partition_pauses_total") == 3
    assert metrics.registry.get_sample_value("vigil_paused_partitions") == 2
