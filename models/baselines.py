"""Baselines Vigil's forecaster is compared with, behind the interfaces of ``vigil.models.online``.

Forecasters: :class:`Persistence`, :class:`SeasonalNaive`, :class:`RiverLinearLags`.
Detectors: :class:`RiverHalfSpaceTrees` and :class:`ForecastResidualDetector` (any forecaster
plus a :class:`~models.scoring.ResidualScorer`).

Missing values (NaN/inf) follow one rule everywhere: the last observed value is carried forward
for features and history, and nothing is learned from the missing one. Each class has
``to_dict`` / ``from_dict`` with strict-JSON state, so an evaluation can checkpoint and resume.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Self

from river import anomaly, linear_model, optim
from river.tree.padded import PaddedBranch, PaddedLeaf

from vigil.models import state_codec
from vigil.models.online import OnlineDetector, OnlineForecaster
from vigil.models.scoring import ResidualScorer, ScoreResult

__all__ = [
    "FORECASTERS",
    "ForecastResidualDetector",
    "OnlineDetector",
    "OnlineForecaster",
    "Persistence",
    "RiverHalfSpaceTrees",
    "RiverLinearLags",
    "SeasonalNaive",
]


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


class Persistence:
    """Tomorrow looks like today: every step forecasts the last observed value."""

    def __init__(self, horizon: int = 1) -> None:
        if horizon < 1:
            raise ValueError("horizon must be at least 1")
        self.horizon = horizon
        self.last: float | None = None

    def predict_one(self) -> list[float]:
        return [math.nan if self.last is None else self.last] * self.horizon

    def learn_one(self, value: float) -> None:
        observed = _finite(value)
        if observed is not None:
            self.last = observed

    def to_dict(self) -> dict[str, Any]:
        return {"horizon": self.horizon, "last": self.last}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        model = cls(int(d["horizon"]))
        model.last = None if d["last"] is None else float(d["last"])
        return model


class SeasonalNaive:
    """Each step forecasts the value one ``period`` before the step it forecasts.

    NaN until a whole period has been seen.
    """

    def __init__(self, period: int, horizon: int = 1) -> None:
        if period < 1 or horizon < 1:
            raise ValueError("period and horizon must be at least 1")
        self.period = period
        self.horizon = horizon
        self.history: deque[float] = deque(maxlen=period)

    def predict_one(self) -> list[float]:
        if len(self.history) < self.period:
            return [math.nan] * self.horizon
        forecast = []
        for step in range(1, self.horizon + 1):
            # The target is `step` ahead; the same phase in the last period is this far back.
            back = self.period * math.ceil(step / self.period) - step
            forecast.append(self.history[-1 - back])
        return forecast

    def learn_one(self, value: float) -> None:
        observed = _finite(value)
        if observed is None:
            if not self.history:
                return
            observed = self.history[-1]
        self.history.append(observed)

    def to_dict(self) -> dict[str, Any]:
        return {"period": self.period, "horizon": self.horizon, "history": list(self.history)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        model = cls(int(d["period"]), int(d["horizon"]))
        model.history.extend(float(v) for v in d["history"])
        return model


class _RunningMoments:
    """Welford's running mean and population std of a stream of floats (std 1.0 until known)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def update(self, value: float) -> None:
        self.count += 1
        diff = value - self.mean
        self.mean += diff / self.count
        self.m2 += diff * (value - self.mean)

    @property
    def std(self) -> float:
        if self.count < 2:
            return 1.0
        std = math.sqrt(self.m2 / self.count)
        return std if std > 0 else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        moments = cls()
        moments.count, moments.mean, moments.m2 = int(d["count"]), float(d["mean"]), float(d["m2"])
        return moments


FEATURE_CLIP = 4.0  # standardised inputs are clipped here: SGD stays stable whatever the data
TARGET_CLIP = 10.0  # per sqrt(step): one absurd value must not wreck the weights


def _clip(value: float, bound: float) -> float:
    return min(bound, max(-bound, value))


class RiverLinearLags:
    """Linear autoregression on the last ``lags`` values, learned online with river.

    Direct multi-step: one ``LinearRegression`` per horizon step, each mapping the features at
    time ``t`` to the change from ``y[t]`` to ``y[t + h]``, so errors of step 1 do not feed into
    step 2. Everything is scale-free, so one learning rate suits any series: the features are
    the ``lags - 1`` one-step changes among the last ``lags`` values divided by the running std
    of one-step changes, plus the level ``y[t]`` standardised by its own running mean and std (a
    stationary series reverts to its mean); the target is the change ``y[t + h] - y[t]`` in the
    same units, mapped back as ``y[t] + std * prediction``. Raw prices as inputs made SGD
    diverge (RMSE 1e5 - 1e11 times persistence's on some stocks). Inputs are clipped at
    ``FEATURE_CLIP``, which bounds each SGD step.
    """

    def __init__(
        self, lags: int = 8, horizon: int = 1, learning_rate: float = 0.003, l2: float = 0.0
    ) -> None:
        if lags < 1 or horizon < 1:
            raise ValueError("lags and horizon must be at least 1")
        if learning_rate <= 0:
            raise ValueError("learning_rate must be positive")
        self.lags = lags
        self.horizon = horizon
        self.learning_rate = learning_rate
        self.l2 = l2
        self.history: deque[float] = deque(maxlen=lags + horizon)
        self.models = [self._new_model() for _ in range(horizon)]
        self.levels = _RunningMoments()  # observed values
        self.changes = _RunningMoments()  # one-step changes between observed values

    @property
    def count(self) -> int:
        """Observed (finite) values learned so far."""
        return self.levels.count

    def _new_model(self) -> linear_model.LinearRegression:
        return linear_model.LinearRegression(
            optimizer=optim.SGD(self.learning_rate), intercept_lr=self.learning_rate, l2=self.l2
        )

    def _features(self, end: int) -> dict[str, float]:
        """Features of the origin ``end`` values before the newest (0 = the newest)."""
        last = len(self.history) - 1 - end
        origin = self.history[last]
        scale = self.changes.std
        features = {"level": _clip((origin - self.levels.mean) / self.levels.std, FEATURE_CLIP)}
        for i in range(1, self.lags):
            change = (self.history[last - i + 1] - self.history[last - i]) / scale
            features[f"change{i}"] = _clip(change, FEATURE_CLIP)
        return features

    def predict_one(self) -> list[float]:
        if len(self.history) < self.lags:
            return [math.nan] * self.horizon
        x = self._features(0)
        last, scale = self.history[-1], self.changes.std
        return [last + scale * model.predict_one(x) for model in self.models]

    def learn_one(self, value: float) -> None:
        observed = _finite(value)
        if observed is None:
            if self.history:
                self.history.append(self.history[-1])
            return
        if self.history:
            self.changes.update(observed - self.history[-1])
        self.history.append(observed)
        self.levels.update(observed)
        scale = self.changes.std
        for step, model in enumerate(self.models, start=1):
            if len(self.history) >= self.lags + step:
                origin = self.history[len(self.history) - 1 - step]
                target = _clip((observed - origin) / scale, TARGET_CLIP * math.sqrt(step))
                model.learn_one(self._features(step), target)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lags": self.lags,
            "horizon": self.horizon,
            "learning_rate": self.learning_rate,
            "l2": self.l2,
            "history": list(self.history),
            "levels": self.levels.to_dict(),
            "changes": self.changes.to_dict(),
            "models": [
                {
                    "weights": dict(model._weights),
                    "intercept": model.intercept,
                    "iterations": model.optimizer.n_iterations,
                }
                for model in self.models
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        model = cls(int(d["lags"]), int(d["horizon"]), float(d["learning_rate"]), float(d["l2"]))
        model.history.extend(float(v) for v in d["history"])
        model.levels = _RunningMoments.from_dict(d["levels"])
        model.changes = _RunningMoments.from_dict(d["changes"])
        for regression, saved in zip(model.models, d["models"], strict=True):
            for name, weight in saved["weights"].items():
                regression._weights[name] = float(weight)
            regression.intercept = float(saved["intercept"])
            regression.optimizer.n_iterations = int(saved["iterations"])
        return model


FORECASTERS: dict[str, type[Persistence] | type[SeasonalNaive] | type[RiverLinearLags]] = {
    "persistence": Persistence,
    "seasonal_naive": SeasonalNaive,
    "river_linear_lags": RiverLinearLags,
}


def _tree_to_list(node: Any) -> list[Any]:
    """Pre-order: ``[feature, threshold, l_mass, r_mass]`` per branch, ``[l, r]`` per leaf."""
    if isinstance(node, PaddedBranch):
        head: list[Any] = [[node.feature, node.threshold, node.l_mass, node.r_mass]]
        return head + _tree_to_list(node.children[0]) + _tree_to_list(node.children[1])
    return [[node.l_mass, node.r_mass]]


def _tree_from_list(nodes: list[Any], at: int = 0) -> tuple[Any, int]:
    entry = nodes[at]
    if len(entry) == 2:
        return PaddedLeaf(l_mass=int(entry[0]), r_mass=int(entry[1])), at + 1
    left, after_left = _tree_from_list(nodes, at + 1)
    right, after_right = _tree_from_list(nodes, after_left)
    feature, threshold, l_mass, r_mass = entry
    branch = PaddedBranch(left, right, str(feature), float(threshold), int(l_mass), int(r_mass))
    return branch, after_right


_RANGE_LOW, _RANGE_SPAN = 0.25, 0.5


class RiverHalfSpaceTrees:
    """river's HalfSpaceTrees over the last ``window`` values, min-max scaled online.

    The range seen so far maps onto [0.25, 0.75] (not [0, 1]): a value beyond it then lands in
    space no tree has seen mass in, instead of being clipped onto the edge of the data where
    HST cannot tell it from the largest ordinary value. A new value is scaled with the range
    seen *before* it (then clipped to [0, 1]), scored, then learned. HST scores nothing (0.0)
    in its first ``mass_window`` events, and neither does this class before ``window`` values.
    """

    def __init__(
        self,
        window: int = 4,
        n_trees: int = 10,
        height: int = 8,
        mass_window: int = 250,
        seed: int = 0,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.n_trees = n_trees
        self.height = height
        self.mass_window = mass_window
        self.seed = seed
        self.history: deque[float] = deque(maxlen=window)
        self.low = math.inf
        self.high = -math.inf
        self.forest = self._new_forest()

    def _new_forest(self) -> anomaly.HalfSpaceTrees:
        return anomaly.HalfSpaceTrees(
            n_trees=self.n_trees,
            height=self.height,
            window_size=self.mass_window,
            seed=self.seed,
        )

    def _scaled(self) -> dict[str, float]:
        span = self.high - self.low
        features = {}
        for i, value in enumerate(reversed(self.history)):
            scaled = _RANGE_LOW + _RANGE_SPAN * (value - self.low) / span if span > 0 else 0.5
            features[f"v{i}"] = min(1.0, max(0.0, scaled))
        return features

    def score_one(self, value: float) -> float:
        observed = _finite(value)
        if observed is None:
            return 0.0
        self.history.append(observed)
        score = 0.0
        if len(self.history) == self.window:
            x = self._scaled()
            score = float(self.forest.score_one(x))
            self.forest.learn_one(x)
        self.low = min(self.low, observed)
        self.high = max(self.high, observed)
        return min(1.0, max(0.0, score))

    def to_dict(self) -> dict[str, Any]:
        forest = self.forest
        return {
            "window": self.window,
            "n_trees": self.n_trees,
            "height": self.height,
            "mass_window": self.mass_window,
            "seed": self.seed,
            "history": list(self.history),
            "low": self.low if math.isfinite(self.low) else None,
            "high": self.high if math.isfinite(self.high) else None,
            "trees": [_tree_to_list(tree) for tree in forest.trees],
            "counter": forest.counter,
            "first_window": forest._first_window,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        detector = cls(
            window=int(d["window"]),
            n_trees=int(d["n_trees"]),
            height=int(d["height"]),
            mass_window=int(d["mass_window"]),
            seed=int(d["seed"]),
        )
        detector.history.extend(float(v) for v in d["history"])
        detector.low = math.inf if d["low"] is None else float(d["low"])
        detector.high = -math.inf if d["high"] is None else float(d["high"])
        forest = detector.forest
        # Once the trees exist the forest's random generator is never used again, and before
        # that it is still fresh from the seed: neither case needs its state saved.
        forest.trees = [_tree_from_list(nodes)[0] for nodes in d["trees"]]
        forest._tree_nodes = [list(tree.iter_dfs()) for tree in forest.trees]
        forest.counter = int(d["counter"])
        forest._first_window = bool(d["first_window"])
        return detector


class ForecastResidualDetector:
    """Any forecaster + a ResidualScorer: score ``value - forecast[0]``, then learn ``value``."""

    def __init__(self, forecaster: OnlineForecaster, scorer: ResidualScorer | None = None) -> None:
        self.forecaster = forecaster
        self.scorer = scorer or ResidualScorer()
        self.last_result: ScoreResult | None = None

    def score_one(self, value: float) -> float:
        forecast = self.forecaster.predict_one()[0]
        result = self.scorer.score_one(float(value) - forecast)  # NaN either side: no evidence
        self.forecaster.learn_one(value)
        self.last_result = result
        return result.score

    def to_dict(self) -> dict[str, Any]:
        forecaster = self.forecaster
        kind = next((k for k, c in FORECASTERS.items() if type(forecaster) is c), None)
        if kind is None or not isinstance(
            forecaster, Persistence | SeasonalNaive | RiverLinearLags
        ):
            raise TypeError(f"cannot serialise a {type(forecaster).__name__} forecaster")
        return {
            "forecaster": {"kind": kind, "state": forecaster.to_dict()},
            "scorer": state_codec.encode(self.scorer),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        saved = d["forecaster"]
        if saved["kind"] not in FORECASTERS:
            raise ValueError(f"unknown forecaster kind {saved['kind']!r}")
        forecaster = FORECASTERS[saved["kind"]].from_dict(saved["state"])
        return cls(forecaster, state_codec.decode(d["scorer"], ResidualScorer))
