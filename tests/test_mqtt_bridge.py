"""MQTT bridge: topic and payload mapping (pure), then end to end through a real Mosquitto."""

from __future__ import annotations

import asyncio
import json

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.connector_fixtures import by_key, mosquitto, read_topic  # noqa: F401  (fixture)
from vigil.connectors.mqtt_bridge import (
    MqttBridge,
    PayloadError,
    TopicKeys,
    reading_from_payload,
    wildcard_segments,
)
from vigil.connectors.producer import RecordProducer
from vigil.settings import VigilSettings
from vigil.topics import ensure_topics

# ---- pure mapping -----------------------------------------------------------------------------


def test_wildcards_and_key_templates() -> None:
    assert wildcard_segments("sensors/+/temperature", "sensors/r1/temperature") == ["r1"]
    assert wildcard_segments("sensors/+/temperature", "sensors/r1/humidity") is None
    assert wildcard_segments("sensors/+/temperature", "sensors/r1/temperature/x") is None
    assert wildcard_segments("plant/#", "plant/a/b/c") == ["a/b/c"]
    assert wildcard_segments("$share/vigil/sensors/+/t", "sensors/r9/t") == ["r9"]

    assert (
        TopicKeys(["sensors/+/temperature"]).key("sensors/r1/temperature")
        == "sensors.r1.temperature"
    )
    keys = TopicKeys(["sensors/+/temperature", "site/+/+/power"], "{1}")
    assert keys.key("sensors/r1/temperature") == "r1"
    assert keys.key("site/north/m3/power") == "north"
    assert TopicKeys(["site/+/+/power"], "power.{1}.{2}").key("site/n/m3/power") == "power.n.m3"
    assert TopicKeys(["a/+"], "{0}").key("a/b") == "a/b"
    with pytest.raises(ValueError, match="does not fit pattern 'sensors/temperature'"):
        TopicKeys(["sensors/temperature"], "{1}")


def test_payloads_become_readings_or_reasons() -> None:
    bare = reading_from_payload(b"21.5", received_at=1_700_000_000.0)
    assert (bare.ts, bare.value) == (1_700_000_000.0, 21.5)
    full = reading_from_payload(b'{"timestamp": "2024-01-01T00:00:00Z", "value": 3}', 5.0)
    assert (full.ts, full.value) == (1704067200.0, 3.0)
    multi = reading_from_payload(
        b'{"timestamp": 1704067200000, "values": {"t": 1, "h": null}}', 5.0
    )
    assert (multi.ts, multi.values) == (1704067200.0, {"t": 1.0, "h": None})
    stamped = reading_from_payload(b'{"value": 7}', 42.0)
    assert stamped.ts == 42.0
    cases = {
        b"warm": "neither JSON nor a number",
        b"[1, 2]": "JSON object or a number, got list",
        b'{"timestamp": 1, "value": "hot"}': "value: value must be a number, got 'hot'",
        b'{"timestamp": "soon", "value": 1}': "timestamp",
        b'{"timestamp": 1}': "exactly one of 'value' or 'values'",
        b"\xff\xfe": "not UTF-8",
        b"true": "got bool",
    }
    for payload, reason in cases.items():
        with pytest.raises(PayloadError, match=reason):
            reading_from_payload(payload, 1.0)


# ---- end to end through Mosquitto and Kafka ----------------------------------------------------


def publisher(port: int) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def publish_all(client: paho.Client, messages: list[tuple[str, bytes]]) -> None:
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(timeout=5)


async def start_bridge(bridge: MqttBridge) -> asyncio.Task:
    task = asyncio.create_task(bridge.run())
    async with asyncio.timeout(10):
        await bridge.subscribed.wait()
    return task


async def test_bridge_forwards_readings_and_dead_letters(
    settings: VigilSettings,
    mosquitto: int,  # noqa: F811
) -> None:
    await ensure_topics(settings)
    messages = [
        (
            f"sensors/{room}/temperature",
            json.dumps({"timestamp": 1_700_000_000 + i, "value": 20 + i}).encode(),
        )
        for i in range(10)
        for room in ("r1", "r2")
    ]
    messages += [
        ("sensors/r3/temperature", b"19.25"),  # bare number: stamped on receipt
        ("sensors/r3/temperature", b"warm"),  # dead letter
        ("sensors/r1/temperature", b'{"timestamp": 1, "value": "hot"}'),  # dead letter
        ("sensors/r1/humidity", b"55"),  # not subscribed: never reaches Kafka
    ]
    async with RecordProducer(settings) as producer:
        bridge = MqttBridge(
            producer, port=mosquitto, patterns=["sensors/+/temperature"], key_template="room.{1}"
        )
        task = await start_bridge(bridge)
        client = publisher(mosquitto)
        try:
            await asyncio.to_thread(publish_all, client, messages)
            records = await read_topic(settings, settings.topics.readings, expect=21)
            letters = await read_topic(settings, settings.topics.dead_letters, expect=2)
        finally:
            client.loop_stop()
            client.disconnect()
            bridge.stop()
            stats = await task
    readings = by_key(records)
    assert sorted(readings) == ["room.r1", "room.r2", "room.r3"]
    for room in ("r1", "r2"):
        assert [(r["timestamp"], r["value"]) for r in readings[f"room.{room}"]] == [
            (1_700_000_000.0 + i, 20.0 + i) for i in range(10)
        ]
    assert readings["room.r3"][0]["value"] == 19.25
    assert readings["room.r3"][0]["timestamp"] > 1_700_000_000  # receive time, now-ish
    reasons = sorted(letter.json()["reason"] for letter in letters)
    assert reasons == [
        "mqtt topic sensors/r1/temperature: value: value must be a number, got 'hot'",
        "mqtt topic sensors/r3/temperature: payload 'warm' is neither JSON nor a number",
    ]
    assert {letter.json()["source"] for letter in letters} == {
        "mqtt:sensors/r1/temperature",
        "mqtt:sensors/r3/temperature",
    }
    assert (stats.readings, stats.dead_letters) == (21, 2)


@pytest.mark.parametrize("protocol", [5, 4], ids=["mqtt5", "mqtt311"])
async def test_persistent_session_delivers_what_arrived_while_the_bridge_was_down(
    settings: VigilSettings,
    mosquitto: int,  # noqa: F811
    protocol: int,
) -> None:
    await ensure_topics(settings)
    client_id = f"bridge-{settings.app_id}"
    async with RecordProducer(settings) as producer:
        first = MqttBridge(
            producer, port=mosquitto, patterns=["plant/#"], client_id=client_id, protocol=protocol
        )
        task = await start_bridge(first)  # registers the session and its subscription
        first.stop()
        await task
        client = publisher(mosquitto)
        try:
            batch = [(f"plant/line{i % 2}/flow", str(i).encode()) for i in range(6)]
            await asyncio.to_thread(publish_all, client, batch)
        finally:
            client.loop_stop()
            client.disconnect()
        second = MqttBridge(
            producer, port=mosquitto, patterns=["plant/#"], client_id=client_id, protocol=protocol
        )
        task = asyncio.create_task(second.run())
        try:
            records = await read_topic(settings, settings.topics.readings, expect=6)
        finally:
            second.stop()
            await task
    values = {k: [r["value"] for r in v] for k, v in by_key(records).items()}
    assert values == {"plant.line0.flow": [0.0, 2.0, 4.0], "plant.line1.flow": [1.0, 3.0, 5.0]}
