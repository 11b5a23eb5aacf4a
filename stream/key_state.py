"""Everything Vigil remembers about one series (key) of one model group, JSON-able for Redis.

Each part is a small pure estimator from ``models`` taking plain parameters; this module bundles
them, and :meth:`KeyState.new` is the one place where a group's settings become estimator
parameters. Storing and restoring go through :mod:`vigil.models.state_codec`, which encodes the
whole bundle, nested estimators included, as one strict-JSON dict.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from vigil.models import state_codec
from vigil.models.admission import TrainingAdmission
from vigil.models.combination import PersistenceCombination
from vigil.models.conformal import AdaptiveConformal
from vigil.models.drift import ResidualDriftMonitor
from vigil.models.incidents import IncidentDetector
from vigil.models.normalizer import RunningNormalizer
from vigil.models.novelty import ContextNovelty
from vigil.models.range_break import RangeBreak
from vigil.models.reference import ReferenceProfile
from vigil.models.scoring import NORMALISED_MIN_SPREAD, ResidualScorer
from vigil.models.season import SeasonalLags
from vigil.models.state_codec import persistent
from vigil.models.window import WindowBuffer
from vigil.settings import ModelConfig, ModelGroup

CONTEXT_VALUES = 32  # recent raw values kept for alert context


@persistent
@dataclass
class PendingForecast:
    """A forecast made at an earlier event, in normalised units, aged one step per event."""

    __state__: ClassVar[tuple[str, ...]] = ()

    values: list[list[float]]  # [horizon][channels]
    age: int = 0


@persistent
@dataclass
class KeyState:
    """The estimators of one key (constructor parameters) and what the stream tracks beside."""

    __state__: ClassVar[tuple[str, ...]] = (
        "pending",
        "hidden",
        "hidden_version",
        "last_ts",
        "interval",
        "events",
        "positions",
        "recent",
    )

    key: str
    group: str
    normalizer: RunningNormalizer
    window: WindowBuffer  # window + horizon normalised rows: inference input and training pairs
    scorer: ResidualScorer
    incidents: IncidentDetector
    conformal: list[AdaptiveConformal]  # one per channel
    drift: ResidualDriftMonitor
    admission: TrainingAdmission
    # the second detector (contextual novelty); a default so state stored before it still loads
    novelty: ContextNovelty = field(default_factory=ContextNovelty)
    # the range-break part (detector.range_tolerance); None: off, or state stored before it
    range_break: RangeBreak | None = None
    # EWMA of each delta's distance from a whole number of intervals: are the key's timestamps
    # regular? Learned, but kept
    # as a parameter with a default so that state stored before it still loads.
    jitter: float = 0.0
    # seasonal-lag inputs and the forecast combination, when the group uses them (None: state
    # stored before them, or the group does not; the processor builds them when needed)
    season: SeasonalLags | None = None
    combination: PersistenceCombination | None = None
    # reference mode (detector.reference): the key's frozen known-normal profile, None when off
    reference: ReferenceProfile | None = None
    pending: PendingForecast | None = field(default=None, init=False)
    hidden: str | None = field(default=None, init=False)  # stateful mode: LSTM state (base64)
    hidden_version: str | None = field(default=None, init=False)  # model version of `hidden`
    last_ts: float | None = field(default=None, init=False)
    interval: float | None = field(default=None, init=False)  # typical gap between events (EWMA)
    events: int = field(default=0, init=False)
    # newest offset absorbed per source "topic:partition": redelivered records are recognised
    positions: dict[str, int] = field(default_factory=dict, init=False)
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=CONTEXT_VALUES), init=False)

    @classmethod
    def new(cls, key: str, group: ModelGroup) -> Self:
        """A fresh state for ``key``: the mapping from settings to estimator parameters."""
        model, detector = group.model, group.detector
        channels = model.input_size
        return cls(
            key=key,
            group=group.name,
            normalizer=RunningNormalizer(channels),
            # the values, then the calendar columns when the model takes them
            window=WindowBuffer(model.window + model.horizon, model.features, group.gap_policy),
            scorer=ResidualScorer(
                short_window=detector.short_window,
                long_window=detector.long_window,
                min_spread=NORMALISED_MIN_SPREAD,  # residuals are in normalised units
                surprisal_cap=detector.surprisal_cap,
                threshold=detector.threshold,
                clear_threshold=detector.clear_threshold,
            ),
            incidents=IncidentDetector(
                key,
                threshold=detector.threshold,
                clear_threshold=detector.clear_threshold,
                cooldown_events=detector.cooldown_events,
                warmup_events=detector.warmup_events,
            ),
            conformal=[
                AdaptiveConformal(horizon=model.horizon, alpha=detector.interval_alpha)
                for _ in range(channels)
            ],
            # the detector's warm-up doubles as the drift test's: no drift before alerts start
            drift=ResidualDriftMonitor(min_instances=max(2, detector.warmup_events)),
            admission=TrainingAdmission(group.training.level_shift_readmit_after),
            season=new_season(model),
            combination=new_combination(model),
            reference=new_reference(group),
            novelty=ContextNovelty(
                bins=detector.novelty_bins,
                orders=detector.novelty_orders,
                capacity=detector.novelty_capacity,
                rest_events=detector.novelty_rest_events,
            ),
            range_break=new_range_break(group),
        )

    def to_dict(self) -> dict[str, Any]:
        """The state as strict JSON types, for ``orjson.dumps`` (see ``state_codec``)."""
        return state_codec.encode(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`; ``ValueError``/``TypeError`` on state that does not fit."""
        return state_codec.decode(d, cls)


def new_reference(group: ModelGroup) -> ReferenceProfile | None:
    """The reference profile ``detector.reference`` asks for (None when ``off``)."""
    config = group.detector.reference
    if config.mode == "off":
        return None
    return ReferenceProfile(
        channels=group.model.input_size,
        events=config.events,
        window=config.window,
        order=config.order,
        smooth=config.smooth,
    )


def new_range_break(group: ModelGroup) -> RangeBreak | None:
    """The range-break part ``detector.range_tolerance`` asks for (None when off)."""
    detector = group.detector
    if detector.range_tolerance is None:
        return None
    return RangeBreak(tolerance=detector.range_tolerance, warmup=detector.warmup_events)


def new_season(model: ModelConfig) -> SeasonalLags | None:
    """The seasonal-lag estimator ``model.season_lag`` asks for (None when ``off``)."""
    if model.season_lag == "off":
        return None
    period = 0 if model.season_lag == "auto" else int(model.season_lag)
    return SeasonalLags(model.horizon, model.input_size, period)


def new_combination(model: ModelConfig) -> PersistenceCombination | None:
    """The forecast combination ``model.combine`` asks for (None when ``off``)."""
    if model.combine == "off":
        return None
    return PersistenceCombination(model.horizon, model.input_size)
