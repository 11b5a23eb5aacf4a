"""Wire records: readings are validated strictly; dead letters keep the original bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from vigil.records import DeadLetter, Reading
from vigil.stream.validation import Rejection, decode_event


def test_timestamps_in_seconds_milliseconds_and_iso_agree() -> None:
    a = Reading.model_validate({"timestamp": 1_700_000_000, "value": 1})
    b = Reading.model_validate({"timestamp": 1_700_000_000_000, "value": 1})
    c = Reading.model_validate({"timestamp": "2023-11-14T22:13:20Z", "value": 1})
    d = Reading.model_validate({"timestamp": "2023-11-14 22:13:20", "value": 1})  # naive = UTC
    assert a.ts == b.ts == c.ts == d.ts == 1_700_000_000


def test_null_is_a_missing_observation_but_nan_is_rejected() -> None:
    assert Reading.model_validate({"timestamp": 1, "value": None}).missing
    with pytest.raises(ValidationError, match="send null"):
        Reading.model_validate({"timestamp": 1, "value": float("nan")})


def test_multivariate_values_are_ordered_by_channel_names() -> None:
    reading = Reading.model_validate({"timestamp": 1, "values": {"b": 2, "a": 1, "c": None}})
    assert reading.vector(["a", "b", "c"]) == [1.0, 2.0, None]
    assert reading.vector() == [1.0, 2.0, None]  # sorted names without a channel list


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'{"timestamp": 1}', "missing_field"),
        (b'{"value": 1}', "missing_field"),
        (b'{"timestamp": 1, "value": 1, "values": {"a": 1}}', "missing_field"),
        (b'{"timestamp": "yesterday", "value": 1}', "bad_timestamp"),
        (b'{"timestamp": true, "value": 1}', "bad_timestamp"),
        (b'{"timestamp": 1, "value": "x"}', "non_numeric"),
        (b'{"timestamp": 1, "value": Infinity}', "nan_or_inf"),
        (b'{"timestamp": 1, "values": {"a": "x"}}', "non_numeric"),
    ],
)
def test_each_malformed_value_gets_its_reason(raw: bytes, code: str) -> None:
    decoded = decode_event(b"k", raw, topic="t", partition=0, offset=7)
    assert isinstance(decoded, Rejection)
    assert decoded.code == code, decoded.reason


def test_a_record_without_key_is_rejected() -> None:
    decoded = decode_event(None, b'{"timestamp": 1, "value": 1}', topic="t", partition=0, offset=0)
    assert isinstance(decoded, Rejection) and decoded.code == "missing_key"


@given(st.binary(max_size=200))
def test_dead_letters_round_trip_any_bytes(raw: bytes) -> None:
    letter = DeadLetter.of("why", raw, topic="t", partition=1, offset=2, key=b"k", at=0.0)
    again = DeadLetter.model_validate_json(letter.model_dump_json())
    assert again.original_bytes() == raw


@given(st.binary(max_size=100))
def test_decoding_never_raises(raw: bytes) -> None:
    decode_event(b"k", raw, topic="t", partition=0, offset=0)
