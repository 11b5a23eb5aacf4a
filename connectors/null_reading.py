"""Send a reading so that a missing univariate observation stays ``"value": null`` on the wire.

``Reading.to_json`` drops None fields, so ``Reading(value=None)`` would go out as
``{"timestamp": ...}`` — which no consumer can parse back (a reading needs value or values).
Sources that forward gaps (dropouts, empty CSV cells, MQTT ``null``) send through here. Once
``Reading.to_json`` keeps ``"value": null`` this module can go.
"""

from __future__ import annotations

import json

from connectors.producer import RecordProducer
from vigil.records import Reading


def reading_json(reading: Reading) -> bytes:
    if reading.values is None and reading.value is None:
        return json.dumps({"timestamp": reading.ts, "value": None}).encode()
    return reading.to_json()


async def send_reading(producer: RecordProducer, key: str, reading: Reading, topic: str) -> None:
    if reading.values is None and reading.value is None:
        await producer.send_raw(topic, reading_json(reading), key.encode())
    else:
        await producer.send_reading(key, reading, topic)
