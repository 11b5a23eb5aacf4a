"""The two interfaces every online model meets in evaluations, Vigil's own and the baselines.

Both are river-style: one value at a time, predict/score *before* learning, so a model is
always judged on data it has not seen yet.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["OnlineDetector", "OnlineForecaster"]


@runtime_checkable
class OnlineForecaster(Protocol):
    """Forecasts the next ``horizon`` values of one univariate series.

    ``predict_one()`` returns ``horizon`` floats: element ``h`` is the forecast of the value
    ``h + 1`` steps after the last one learned. Elements are NaN while the model has not seen
    enough data to forecast (callers skip those). ``learn_one(value)`` appends the next
    observation; a NaN value means "missing" and must not corrupt the model.
    """

    horizon: int

    def predict_one(self) -> list[float]: ...

    def learn_one(self, value: float) -> None: ...


@runtime_checkable
class OnlineDetector(Protocol):
    """Scores each new value of one series in [0, 1] (higher = more anomalous), then learns it."""

    def score_one(self, value: float) -> float: ...
