"""The models the evaluations can run, by name: anomaly detectors for ``vigil eval nab`` and
forecasters for ``vigil eval forecast``.

Adding one is one line at the bottom of this file (or a call from anywhere before the run)::

    register_detector("vigil", lambda: VigilDetector())
    register_forecaster("vigil", _vigil_forecaster)

A detector factory takes no argument and returns a fresh :class:`OnlineDetector` (one per
series).  A forecaster factory takes the run's :class:`ForecastSetup` and returns a fresh
:class:`OnlineForecaster`, or ``None`` when it does not apply (a seasonal model with no season).
Forecasters may also offer ``interval_one() -> (lower, upper)`` for their last forecast.

``vigil eval nab`` runs files in worker processes started fresh ("spawn"), which import this
module again: a detector registered here is seen by the workers, one registered at run time
only when the run uses a single worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from vigil.bench.nab.windowed_gaussian import WindowedGaussian
from vigil.models.baselines import (
    ForecastResidualDetector,
    Persistence,
    RiverHalfSpaceTrees,
    RiverLinearLags,
    SeasonalNaive,
)
from vigil.models.online import OnlineDetector, OnlineForecaster

if TYPE_CHECKING:
    from vigil.settings import ModelGroup

__all__ = [
    "DetectorFactory",
    "ForecastSetup",
    "ForecasterFactory",
    "GridForecaster",
    "IntervalForecaster",
    "OnlineDetector",
    "OnlineForecaster",
    "detector_factories",
    "forecaster_factories",
    "register_detector",
    "register_forecaster",
]


@dataclass(frozen=True)
class ForecastSetup:
    """What a forecaster is built for: ``horizon`` steps ahead, ``season`` values per cycle;
    ``group`` (Vigil's config, default ``forecast_group(horizon)``) and ``seed`` for models
    that take them."""

    horizon: int = 1
    season: int | None = None
    group: ModelGroup | None = None
    seed: int = 0


@runtime_checkable
class IntervalForecaster(OnlineForecaster, Protocol):
    """A forecaster that also bounds its last forecast: floats (next step) or one per step."""

    def interval_one(self) -> tuple[float | Sequence[float], float | Sequence[float]]: ...


@runtime_checkable
class GridForecaster(OnlineForecaster, Protocol):
    """A forecaster on its own time grid, as the stream is: per value learned, the steps it moved
    on (1 + the missing steps it filled before the value; 0 for a value it rejected), and its
    rejections by value index. Its step ``h`` covers the row that many grid steps ahead."""

    grid_steps: list[int]
    rejected: dict[int, str]


DetectorFactory = Callable[[], OnlineDetector]
ForecasterFactory = Callable[[ForecastSetup], OnlineForecaster | None]

detector_factories: dict[str, DetectorFactory] = {}
forecaster_factories: dict[str, ForecasterFactory] = {}


def register_detector(name: str, factory: DetectorFactory) -> None:
    """Make ``factory`` runnable as ``vigil eval nab --detector NAME`` (replaces a same name)."""
    if not name or "/" in name or name != name.strip():
        raise ValueError(f"detector name {name!r} must be non-empty, without '/' or spaces")
    detector_factories[name] = factory


def register_forecaster(name: str, factory: ForecasterFactory) -> None:
    """Make ``factory`` one of the models ``vigil eval forecast`` compares."""
    if not name:
        raise ValueError("forecaster name must not be empty")
    forecaster_factories[name] = factory


def _vigil_detector(
    fusion: str | None = None,
    seed: int = 0,
    train: bool = True,
    calendar: str | None = None,
    range_break: bool = True,
) -> Callable[[], OnlineDetector]:
    """Vigil as configured for NAB (``nab_group``), optionally with another fusion rule or
    calendar setting, or without the range-break part (to measure the others alone)."""

    def build() -> OnlineDetector:
        from vigil.bench.replay_harness import VigilDetector, nab_group  # torch loads lazily

        group = nab_group()
        if fusion is not None:
            detector = group.detector.model_copy(update={"fusion": fusion})
            group = group.model_copy(update={"detector": detector})
        if calendar is not None:
            model = group.model.model_copy(update={"calendar": calendar})
            group = group.model_copy(update={"model": model})
        if not range_break:
            detector = group.detector.model_copy(update={"range_tolerance": None})
            group = group.model_copy(update={"detector": detector})
        return VigilDetector(group, seed=seed, train=train)

    return build


def _vigil_forecaster(setup: ForecastSetup, calendar: str | None = None) -> OnlineForecaster:
    """Vigil with ``setup.group`` (or ``forecast_group``), optionally another calendar setting."""
    from vigil.bench.replay_harness import VigilForecaster, forecast_group

    group = setup.group or forecast_group(setup.horizon)
    if calendar is not None:
        group = group.model_copy(
            update={"model": group.model.model_copy(update={"calendar": calendar})}
        )
    return VigilForecaster(setup.horizon, group, seed=setup.seed)


def _seasonal_naive(setup: ForecastSetup) -> OnlineForecaster | None:
    if setup.season is None or setup.season < 2:
        return None
    return SeasonalNaive(period=setup.season, horizon=setup.horizon)


# --- registrations: one line per model -----------------------------------------------------
register_detector("vigil", _vigil_detector())  # the stream's own logic: bench.replay_harness
# variants, for docs/evaluation.md: each fusion rule of DetectorConfig.fusion (`vigil-max`, ...),
# without the calendar inputs (`vigil-no-calendar`, `vigil-no-calendar-corroborated`, ...), and
# seeds 1 and 2 of each (`-s1`, `-s2`)
for _seed in (0, 1, 2):
    _suffix = f"-s{_seed}" if _seed else ""
    if _seed:
        register_detector(f"vigil{_suffix}", _vigil_detector(seed=_seed))
    register_detector(f"vigil-no-calendar{_suffix}", _vigil_detector(seed=_seed, calendar="off"))
    for _rule in ("likelihood", "novelty", "max", "corroborated"):
        register_detector(f"vigil-{_rule}{_suffix}", _vigil_detector(_rule, _seed))
        register_detector(
            f"vigil-no-calendar-{_rule}{_suffix}", _vigil_detector(_rule, _seed, calendar="off")
        )
# the novelty part does not depend on the model: no training needed to measure it alone
register_detector(
    "vigil-novelty-untrained", _vigil_detector("novelty", train=False, range_break=False)
)
register_detector("vigil-no-range", _vigil_detector(range_break=False))  # all but the range part
register_detector("windowed-gaussian", WindowedGaussian)
register_detector("river-hst", RiverHalfSpaceTrees)
register_detector("persistence-residual", lambda: ForecastResidualDetector(Persistence()))
register_detector("river-lags-residual", lambda: ForecastResidualDetector(RiverLinearLags()))

register_forecaster("vigil", _vigil_forecaster)
register_forecaster("vigil-no-calendar", lambda setup: _vigil_forecaster(setup, "off"))
register_forecaster("persistence", lambda setup: Persistence(horizon=setup.horizon))
register_forecaster("seasonal-naive", _seasonal_naive)
register_forecaster("river-linear-lags", lambda setup: RiverLinearLags(horizon=setup.horizon))
