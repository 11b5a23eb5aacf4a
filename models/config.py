"""The models' own parameter schemas: pure pydantic, no environment reading.

They live here, not in ``vigil.settings``, so the maths depends on nothing above it; the settings
import and re-export them and decide where the values come from (variables, a TOML file).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(ValueError):
    """A setting has a value Vigil cannot run with; the message names the variable."""


class StrictModel(BaseModel):
    """A nested config: an unknown field (``"modle"``) is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")


class ModelConfig(StrictModel):
    """Shape of one forecaster; stored with every registry version so weights can be rebuilt."""

    cell: Literal["lstm", "peephole", "gru"] = "lstm"
    input_size: int = Field(1, ge=1, description="values per event (1 = univariate)")
    hidden_size: int = Field(64, ge=1, le=4096)
    num_layers: int = Field(2, ge=1, le=8)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    window: int = Field(64, ge=2, le=4096, description="events per window in window mode")
    horizon: int = Field(1, ge=1, le=256, description="steps ahead the model forecasts")
    residual: bool = Field(
        True,
        description="forecast = last value + learned change; an untrained model is persistence",
    )
    calendar: Literal["auto", "on", "off"] = Field(
        "auto",
        description="time of day and day of week (sin/cos of each event's timestamp) as 4 extra"
        " inputs: `on`; `auto`: fed while a key's timestamps are regular, zeros otherwise;"
        " `off`: no such inputs",
    )

    season_lag: Literal["off", "auto"] | Annotated[int, Field(ge=2, le=4096)] = Field(
        "off",
        description="how far the series moved over each forecast step one season earlier, as"
        " horizon x input_size extra inputs added through a learned gain: a season in events,"
        " `auto` (one day or one week, detected per key from the autocorrelation of its first"
        " events' changes) or `off`",
    )
    combine: Literal["persistence", "off"] = Field(
        "off",
        description="`persistence`: publish last + w (forecast - last), w per key and step fitted"
        " online from recent errors, so a key the network cannot beat falls back to persistence",
    )

    @property
    def lag_features(self) -> int:
        """Seasonal-lag inputs per row: one per forecast step and channel, or none."""
        return 0 if self.season_lag == "off" else self.horizon * self.input_size

    @property
    def features(self) -> int:
        """Inputs per row the network takes: the values, the calendar context if any, then the
        seasonal lags if any."""
        return self.input_size + (4 if self.calendar != "off" else 0) + self.lag_features


class TrainingConfig(StrictModel):
    """Online fine-tuning: small guarded steps that never block inference."""

    enabled: bool = True
    learning_rate: float = Field(1e-3, gt=0, lt=1)
    weight_decay: float = Field(1e-5, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    batch_size: int = Field(32, ge=1, le=4096)
    replay_capacity: int = Field(4096, ge=16)
    recent_fraction: float = Field(
        0.5, ge=0, le=1, description="share of a batch from recent examples"
    )
    holdout_size: int = Field(
        64, ge=4, description="recent examples held back for shadow evaluation"
    )
    steps_per_round: int = Field(20, ge=1)
    min_examples: int = Field(128, ge=1, description="examples before the first round")
    promote_margin: float = Field(
        0.02, ge=0, lt=1, description="relative loss gain a candidate needs"
    )
    level_shift_readmit_after: int = Field(
        50,
        ge=0,
        description="flagged events in a row after which a persistent shift may be learned",
    )
    cpu_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="share of wall time the trainer thread may compute; it rests the remainder "
        "so inference keeps the CPU",
    )


class BatchConfig(StrictModel):
    """Batched inference: one forward pass for many keys."""

    max_size: int = Field(256, ge=1, le=65536, description="windows per forward pass at most")
    max_wait_ms: float = Field(
        5.0, ge=0, le=10_000, description="longest wait to fill a batch (also the reorder buffer)"
    )
    latency_target_ms: float = Field(25.0, gt=0, description="batch sizing aims under this")
    max_queue: int = Field(
        1024, ge=1, description="events buffered per input topic before busy partitions pause"
    )
