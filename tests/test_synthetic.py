"""Synthetic series: labels describe exactly what was injected, seeds reproduce, and readings
(gaps as ``"value": null``) reach the real Kafka, also through `vigil connect synthetic`."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.connector_fixtures import by_key, cli_env, read_topic
from vigil.cli import app
from vigil.connectors.producer import RecordProducer
from vigil.connectors.synthetic import ANOMALY_KINDS, AnomalyLabel, SyntheticSeries, send_synthetic
from vigil.records import Reading
from vigil.settings import VigilSettings
from vigil.topics import ensure_topics


def test_labels_match_the_injected_anomalies() -> None:
    series = SyntheticSeries(keys=5, points=2000, seed=7)
    assert len(series.labels) == 5 * 4
    assert Counter(label.kind for label in series.labels) == {kind: 5 for kind in ANOMALY_KINDS}
    ts = series.timestamps
    for key in series.keys:
        sent = series.values(key)
        clean = series.clean(key)
        labels = [label for label in series.labels if label.key == key]
        assert sorted(label.kind for label in labels) == sorted(ANOMALY_KINDS)
        inside = np.zeros(series.points, dtype=bool)
        for label in labels:
            window = (ts >= label.start_ts) & (ts <= label.end_ts)
            assert not (inside & window).any(), "anomalies overlap"
            inside |= window
            idx = np.flatnonzero(window)
            part = [sent[i] for i in idx]
            if label.kind == "dropout":
                assert all(v is None for v in part)
                continue
            diff = np.array(part, dtype=float) - clean[idx]
            assert (np.abs(diff) > 1e-9).all(), label  # every labelled point is changed
            amplitude = series.shapes[key].amplitude
            if label.kind == "spike":
                assert len(idx) == 1 and abs(diff[0]) >= 3 * amplitude
            elif label.kind == "level_shift":
                assert np.allclose(diff, diff[0]) and abs(diff[0]) >= amplitude
            else:  # drift: a slow ramp away and back, largest in the middle
                peak = int(np.argmax(np.abs(diff)))
                assert 0 < peak < len(diff) - 1
                assert np.abs(diff[0]) < np.abs(diff[peak]) / 2 > np.abs(diff[-1])
        outside = ~inside
        assert np.array_equal(
            np.array([sent[i] for i in np.flatnonzero(outside)], dtype=float), clean[outside]
        )
        assert not inside[: series.warmup].any()  # a clean warm-up first


def test_seeds_reproduce_and_differ() -> None:
    a, b = SyntheticSeries(3, 500, seed=11), SyntheticSeries(3, 500, seed=11)
    assert a.labels == b.labels
    assert all(a.values(k) == b.values(k) for k in a.keys)
    c = SyntheticSeries(3, 500, seed=12)
    assert a.labels != c.labels and a.values(a.keys[0]) != c.values(c.keys[0])
    # The clean series does not depend on which anomalies are injected.
    only_spikes = SyntheticSeries(3, 500, seed=11, kinds=["spike"])
    assert all(np.array_equal(a.clean(k), only_spikes.clean(k)) for k in a.keys)
    assert {label.kind for label in only_spikes.labels} == {"spike"}
    none = SyntheticSeries(3, 500, seed=11, anomalies_per_key=0)
    assert none.labels == [] and none.values(none.keys[0]) == a.clean(a.keys[0]).tolist()
    with pytest.raises(ValueError, match="unknown anomaly kinds"):
        SyntheticSeries(kinds=["meteor"])
    with pytest.raises(ValueError, match="too few"):
        SyntheticSeries(points=100, anomalies_per_key=10)


async def test_synthetic_readings_reach_kafka_with_gaps_as_null(settings: VigilSettings) -> None:
    await ensure_topics(settings)
    series = SyntheticSeries(keys=3, points=300, seed=5, interval_s=30.0)
    async with RecordProducer(settings) as producer:
        sent = await send_synthetic(series, producer, speed=0)
    assert sent == 900
    records = await read_topic(settings, settings.topics.readings, expect=900)
    assert len(records) == 900
    grouped = by_key(records)
    for key in series.keys:
        assert [r["value"] for r in grouped[key]] == series.values(key)
        assert [r["timestamp"] for r in grouped[key]] == series.timestamps.tolist()
    gaps = [r for r in records if r.json()["value"] is None]
    assert len(gaps) == sum(v is None for k in series.keys for v in series.values(k)) > 0
    assert json.loads(gaps[0].value)["value"] is None
    assert Reading.model_validate_json(gaps[0].value).missing  # a consumer can parse the gap


def test_cli_synthetic_writes_labels_and_sends(settings: VigilSettings, tmp_path: Path) -> None:
    labels_path = tmp_path / "labels.json"
    args = ["connect", "synthetic", "--keys", "2", "--points", "200", "--seed", "7", "--speed", "0"]
    args += ["--no-progress", "--labels-out", str(labels_path)]
    result = CliRunner().invoke(app, args, env=cli_env(settings))
    assert result.exit_code == 0, result.output
    assert "400 readings for 2 keys" in result.output
    labels = [AnomalyLabel.from_dict(d) for d in json.loads(labels_path.read_text())]
    assert labels == SyntheticSeries(keys=2, points=200, seed=7).labels

    records = asyncio.run(read_topic(settings, settings.topics.readings, expect=400, settle_s=0.2))
    assert len(records) == 400
