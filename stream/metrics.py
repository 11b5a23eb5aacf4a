"""Vigil's Prometheus metrics, in the same registry Faust's Prometheus sensor serves on /metrics.

One registry per app (not the process-wide default), so tests can build several apps in one
process; collectors that live in the default registry (webhook delivery counters) are bridged in.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
# Finer around the batch latency target (tens of ms), so p99 under overload is readable.
IN_WORKER_BUCKETS = (
    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip


class _DefaultRegistryBridge:
    """Exposes the default registry's collectors (minus the process ones we already have)."""

    def collect(self) -> Iterator[Metric]:
        for metric in REGISTRY.collect():
            if metric.name.startswith("vigil_webhook"):
                yield metric


class VigilMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter("vigil_events", "Events by outcome", ["group", "outcome"], registry=r)
        self.latency = Histogram(
            "vigil_event_to_prediction_seconds",
            "From the event's Kafka timestamp to its prediction being sent",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vigil_batch_size", "Windows per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.dead_letters = Counter(
            "vigil_dead_letters", "Rejected records by reason", ["reason"], registry=r
        )
        self.alerts = Counter("vigil_alerts", "Alerts sent", ["group", "severity"], registry=r)
        self.model_version = Gauge(
            "vigil_model_version_info",
            "Live model version (value 1)",
            ["group", "version"],
            registry=r,
        )
        self.training_steps = Counter(
            "vigil_training_steps", "Optimiser steps taken online", ["group"], registry=r
        )
        self.promotions = Counter(
            "vigil_model_promotions",
            "Candidates promoted or rejected",
            ["group", "outcome"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "vigil_consumer_lag",
            "High-water mark minus position",
            ["topic", "partition"],
            registry=r,
        )
        self.loop_lag = Gauge(
            "vigil_event_loop_lag_seconds", "How late a 100 ms timer fires", registry=r
        )
        self.loop_lag_max = Gauge(
            "vigil_event_loop_lag_max_seconds", "Largest loop lag in the last minute", registry=r
        )
        self.queue_depth = Gauge(
            "vigil_inference_queue_depth", "Windows waiting for inference", registry=r
        )
        self.buffer_full = Counter(
            "vigil_buffer_full",
            "Times Faust's stream buffer of an input partition was full (Faust's flow control"
            " stops fetching that partition until it drains)",
            ["topic"],
            registry=r,
        )
        self.intake_holds = Counter(
            "vigil_intake_holds",
            "Times the in-worker limit held the fetch loop (the excess waits in Kafka)",
            registry=r,
        )
        self.intake_held = Gauge(
            "vigil_intake_held", "1 while the in-worker limit holds the fetch loop", registry=r
        )
        self.outage = Gauge(
            "vigil_outage",
            "1 while a service (redis, kafka) is unreachable and batches wait for it",
            ["service"],
            registry=r,
        )
        self.loop_busy = Gauge(
            "vigil_event_loop_busy_ratio",
            "CPU seconds of the event loop's thread per wall second (smoothed): utilisation",
            registry=r,
        )
        self.sustainable_rate = Gauge(
            "vigil_sustainable_events_per_second",
            "Events per second this worker would handle with its event loop fully busy (handled"
            " rate / busy ratio): size clusters and autoscaling from it",
            registry=r,
        )
        self.training_share = Gauge(
            "vigil_training_cpu_share",
            "The trainer's current CPU share: its setting while the loop has room, less as the"
            " loop fills",
            ["group"],
            registry=r,
        )
        self.keys_in_memory = Gauge(
            "vigil_keys_in_memory", "Per-key states held in worker memory", ["group"], registry=r
        )
        self.keys_evicted = Counter(
            "vigil_keys_evicted",
            "Idle keys dropped from worker memory (their state stays in Redis)",
            ["group"],
            registry=r,
        )
        self.states_quarantined = Counter(
            "vigil_states_quarantined",
            "Stored states that could not be loaded: set aside, the key restarts fresh",
            ["group"],
            registry=r,
        )
        self.output_failures = Counter(
            "vigil_output_failures",
            "Output records the broker refused for good (the source event is dead-lettered)",
            ["topic"],
            registry=r,
        )
        self.drift_events = Counter("vigil_drift_events", "Drift detected", ["group"], registry=r)
        self.inference_seconds = Histogram(
            "vigil_inference_seconds",
            "Run time of one batched forward pass (on the model thread)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.training_round_seconds = Histogram(
            "vigil_training_round_seconds",
            "Run time of one fine-tuning round with its shadow evaluation (trainer thread)",
            buckets=(*LATENCY_BUCKETS, 30.0, 60.0),
            registry=r,
        )
        self.state_writes = Counter(
            "vigil_state_writes", "Per-key states written to Redis", registry=r
        )
        self.in_worker = Histogram(
            "vigil_in_worker_seconds",
            "From the record reaching the worker (before Faust's stream buffer) to its outputs"
            " delivered; excludes time waiting in Kafka, so it shows whether backpressure bounds"
            " buffering",
            buckets=IN_WORKER_BUCKETS,
            registry=r,
        )
        self.handle_stage = Histogram(
            "vigil_handle_stage_seconds",
            "Time one batch of events spends in each stage: decode, load_state, process (windows,"
            " inference, scoring), encode (outputs and states serialised), send (outputs handed"
            " to the producer), deliver (until Kafka acknowledged them; overlaps the next"
            " batch), save_state (state to Redis, training feed), and the whole batch (handle)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.handled_events = Histogram(
            "vigil_handled_batch_events",
            "Events per batch the agent handles (Faust's take_events)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        r.register(_DefaultRegistryBridge())

    def set_live_version(self, group: str, version: str) -> None:
        for labels in list(self.model_version._metrics):  # one live version per group
            if labels[0] == group:
                self.model_version.remove(*labels)
        self.model_version.labels(group, version).set(1)
