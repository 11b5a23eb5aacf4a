"""Turns raw Kafka records into validated events, or into a rejection with a reason.

Nothing here raises: every malformed record becomes a :class:`Rejection` whose ``code`` labels
the dead-letter metric and whose ``reason`` travels with the record to the dead-letter topic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from vigil.records import Reading


@dataclass(frozen=True, slots=True)
class InputEvent:
    key: str
    reading: Reading
    topic: str
    partition: int
    offset: int
    kafka_ts: float | None = None  # broker/producer timestamp, seconds


@dataclass(frozen=True, slots=True)
class Rejection:
    code: str  # short label: not_json, missing_field, non_numeric, nan_or_inf, bad_timestamp, …
    reason: str


def decode_event(
    key: bytes | None,
    value: bytes | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    kafka_ts: float | None = None,
) -> InputEvent | Rejection:
    if not key:
        return Rejection("missing_key", "record has no key; the key names the series")
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection("bad_key", "key is not UTF-8")
    if value is None:
        return Rejection("empty", "record has no value (tombstone)")
    try:
        payload = json.loads(value)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return Rejection("not_json", f"value is not JSON: {exc}")
    if not isinstance(payload, dict):
        return Rejection("not_object", f"value must be a JSON object, got {type(payload).__name__}")
    try:
        reading = Reading.model_validate(payload)
    except ValidationError as exc:
        return _rejection_from(exc)
    return InputEvent(key_text, reading, topic, partition, offset, kafka_ts)


def _rejection_from(exc: ValidationError) -> Rejection:
    first = exc.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "record"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        code = "missing_field"
    elif "timestamp" in location or "timestamp" in message:
        code = "bad_timestamp"
    elif "null for a missing value" in message or "not finite" in message:
        code = "nan_or_inf"
    elif "must be a number" in message or first["type"].startswith(("float", "dict")):
        code = "non_numeric"
    elif "exactly one of" in message:
        code = "missing_field"
    else:
        code = "invalid"
    return Rejection(code, f"{location}: {message}")
