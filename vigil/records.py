"""Records on the wire: one pydantic model per topic, JSON-encoded, versioned by field names.

Readings are validated strictly on the way in (a bad one becomes a :class:`DeadLetter` with the
reason); outputs carry :class:`Provenance` so any prediction or alert traces back to the offsets
and model version that produced it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Timestamp = Annotated[float, Field(description="seconds since the Unix epoch, UTC")]


def parse_timestamp(value: Any) -> float:
    """Epoch seconds from a number or an ISO-8601 string (naive strings are taken as UTC)."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be a number or an ISO-8601 string, not a boolean")
    if isinstance(value, int | float):
        ts = float(value)
        if ts > 1e11:  # milliseconds, as most producers send them
            ts /= 1000.0
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"timestamp {value!r} is not ISO-8601") from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ts = parsed.timestamp()
    else:
        raise ValueError(
            f"timestamp must be a number or an ISO-8601 string, got {type(value).__name__}"
        )
    if not math.isfinite(ts):
        raise ValueError("timestamp is not finite")
    return ts


class Reading(BaseModel):
    """What the readings topic carries: one observation of one series (the Kafka key).

    Either ``value`` (univariate) or ``values`` (named channels, e.g. OHLCV) is required.
    Numbers must be finite; a missing observation is sent as ``null`` and handled by the gap
    policy rather than travelling into the network as NaN.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    ts: Timestamp = Field(validation_alias="timestamp", serialization_alias="timestamp")
    value: float | None = None
    values: dict[str, float | None] | None = None

    @field_validator("ts", mode="before")
    @classmethod
    def _timestamp(cls, raw: Any) -> float:
        return parse_timestamp(raw)

    @field_validator("value", mode="before")
    @classmethod
    def _finite_value(cls, raw: Any) -> Any:
        return _finite_or_none(raw, "value")

    @field_validator("values", mode="before")
    @classmethod
    def _finite_values(cls, raw: Any) -> Any:
        if raw is None:
            return None
        if not isinstance(raw, dict) or not raw:
            raise ValueError("values must be a non-empty object of name: number")
        return {str(k): _finite_or_none(v, f"values.{k}") for k, v in raw.items()}

    @model_validator(mode="after")
    def _one_of(self) -> Reading:
        # "value": null is a real (missing) observation, so presence is what counts, not None.
        has_value = "value" in self.model_fields_set
        has_values = self.values is not None
        if has_value == has_values:
            raise ValueError("a reading has exactly one of 'value' or 'values'")
        return self

    @property
    def missing(self) -> bool:
        return all(v is None for v in self.vector())

    def vector(self, channels: list[str] | None = None) -> list[float | None]:
        """The observation as a list; ``channels`` orders named values (None = missing)."""
        if self.values is None:
            return [self.value]
        names = channels or sorted(self.values)
        return [self.values.get(name) for name in names]

    def to_json(self) -> bytes:
        """The wire form; a missing univariate observation stays ``"value": null``."""
        unused = {"values"} if self.values is None else {"value"}
        return self.model_dump_json(by_alias=True, exclude=unused).encode()


def _finite_or_none(raw: Any, name: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError(f"{name} must be a number, got {type(raw).__name__}")
    try:
        number = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc
    if not math.isfinite(number):
        raise ValueError(f"{name} is {raw!r}; send null for a missing value")
    return number


class Provenance(BaseModel):
    """Where an output came from, so it can be traced and reproduced."""

    topic: str
    partition: int
    offset: int
    model_version: str
    vigil_version: str


class Prediction(BaseModel):
    key: str
    timestamp: float
    forecast: list[float] = Field(description="the next `horizon` values, in input units")
    lower: list[float]
    upper: list[float]
    channels: dict[str, dict[str, list[float]]] | None = Field(
        None, description="multivariate groups: forecast, lower, upper per named channel"
    )
    observed: float | None = None
    score: float = Field(ge=0.0, le=1.0)
    score_parts: dict[str, float] | None = Field(
        None,
        description="each detector's own score in [0, 1] (`likelihood`: forecast residuals;"
        " `novelty`: unseen value contexts; `range`: 1.0 for a value beyond the key's whole"
        " range); `score` fuses them by the group's detector.fusion (a range break always counts)",
    )
    anomaly: bool
    group: str
    provenance: Provenance


class Alert(BaseModel):
    alert_id: str
    key: str
    group: str
    status: str = Field("firing", pattern="^(firing|resolved)$")
    severity: str = Field(pattern="^(info|warning|critical)$")
    start: float
    end: float | None = None
    score: float
    recent_values: list[float]
    forecast: list[float]
    provenance: Provenance


DEAD_LETTER_MAX_BYTES = 16_384  # default copy of a rejected value; the rest stays at its offset
DEAD_LETTER_MAX_KEY_CHARS = 1_024


class DeadLetter(BaseModel):
    """A rejected record with its reason and source position, and the first bytes of its value.

    The copy is capped (``original_truncated`` says so, ``original_size`` gives the whole size)
    so a dead letter always fits what the broker accepts, however large the record it rejects:
    a record the broker took once must never wedge its partition on the way to dead letters.
    The whole record stays readable in the source topic at ``partition``/``offset``.
    """

    reason: str
    code: str | None = Field(None, description="the reason's short label (metric label)")
    topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    original: str = Field(description="the original value bytes decoded as latin-1 (maybe cut)")
    original_size: int | None = Field(None, description="bytes of the whole original value")
    original_truncated: bool = False
    source: str = Field("stream", description="which part of Vigil rejected it")
    at: float

    @classmethod
    def of(
        cls,
        reason: str,
        value: bytes | None,
        *,
        topic: str,
        partition: int | None = None,
        offset: int | None = None,
        key: bytes | str | None = None,
        source: str = "stream",
        at: float,
        code: str | None = None,
        max_bytes: int = DEAD_LETTER_MAX_BYTES,
    ) -> DeadLetter:
        key_text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if key_text is not None and len(key_text) > DEAD_LETTER_MAX_KEY_CHARS:
            key_text = key_text[:DEAD_LETTER_MAX_KEY_CHARS]
        whole = value or b""
        return cls(
            reason=reason[:4096],
            code=code,
            topic=topic,
            partition=partition,
            offset=offset,
            key=key_text,
            original=whole[:max_bytes].decode("latin-1"),
            original_size=len(whole),
            original_truncated=len(whole) > max_bytes,
            source=source,
            at=at,
        )

    def original_bytes(self) -> bytes:
        return self.original.encode("latin-1")


class ModelAnnouncement(BaseModel):
    """Published when a version goes live, so every worker hot-swaps without a restart."""

    group: str
    version: str
    at: float
    reason: str = ""


class DriftEvent(BaseModel):
    """A regime change in a key's forecast residuals; training speeds up after one."""

    key: str
    group: str
    timestamp: float
    direction: str
    method: str
    statistic: float
    lr_scale: float
    provenance: Provenance
