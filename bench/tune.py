"""Search a model group's settings by replaying history through the stream's own code, and say
honestly what the chosen settings score on series the search never saw.

Every candidate configuration is a :class:`~vigil.settings.ModelGroup`; every series is replayed
through :class:`~vigil.bench.replay_harness.ReplayHarness` (``VigilDetector`` for NAB,
``VigilForecaster`` for forecasts), a fresh model per series, exactly as ``vigil eval nab`` and
``vigil eval forecast`` run it. Two objectives:

* ``nab``: NAB's normalised score of one profile (standard by default) over the files searched,
  the threshold optimised on those files as NAB's sweeper does (:func:`score_corpus`);
* ``forecast``: the mean over series of the NRMSE at step ``horizon`` (lower is better).

**Cross-validated by series.** Files go to ``k`` folds by :func:`~vigil.bench.nab.crossval.folds_of`
(sorted by name, file ``i`` in fold ``i mod k``). Protocol ``nested`` (the default): for each
fold, a whole search runs on the other folds' series only; its best configuration, with the NAB
threshold chosen on those same training series, is then scored on the fold; the held-out figure
pools all folds (NAB: the summed raw, null and perfect scores, normalised once). A last search on
every series gives the configuration written out and its in-sample figure. Protocol ``holdout``
(cheaper): one search on folds ``0 .. k-2``, reported on fold ``k-1``; that search's best is the
configuration written out.

**Why optuna's TPE.** The space mixes categorical (cell, calendar, fusion), integer (window,
layers, detector windows) and log-scaled float (learning rate) settings; TPE models each of them
directly, needs no gradient, and optuna's journal storage makes a search resumable: rerunning
the same command continues a study where it stopped (completed trials are kept, not rerun).

**Why series in parallel, not trials.** Each trial replays many independent series (a fresh
model each), so ``--workers`` processes replay the series of one trial side by side, as
``vigil eval nab --workers`` does. Trials then run one after another, so each TPE suggestion sees
every earlier result and a search gives the same trials with 1 or 2 workers.

**Deterministic and shared.** The sampler of trial ``n`` is seeded from ``(seed, n)``, not from
the study: a resumed search proposes what an uninterrupted one would, and the random start-up
trials (the first ``startup_trials``, optuna's 10 by default) are the same configurations in
every fold's search. The first trial of every search is the base group (``nab_group()`` /
``forecast_group()``) when the space contains its values. Replays are deterministic, so the
scores of a (configuration, series) pair are computed once and kept (under ``--study-dir``, on
disk): a configuration several searches try costs one replay per series. Sharing never leaks:
each search's objective reads only its own training series.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError
from tqdm import tqdm

from vigil.bench.nab.corpus import Windows, parse_timestamps, read_data_series
from vigil.bench.nab.crossval import folds_of
from vigil.bench.nab.evaluation import ScoredFile, score_corpus
from vigil.bench.nab.scoring import CostMatrix, normalised_score
from vigil.settings import ModelGroup

__all__ = [
    "DEFAULT_FORECAST_SPACE",
    "DEFAULT_NAB_SPACE",
    "ForecastObjective",
    "NabObjective",
    "SearchSpace",
    "Series",
    "Split",
    "TuneOutcome",
    "load_space",
    "plan_splits",
    "read_forecast_series",
    "read_nab_series",
    "run_search",
]

FloatArray = npt.NDArray[np.float64]
SearchProtocol = Literal["nested", "holdout"]

# Short names for the settings people tune most; any other is ``section.field``.
ALIASES: dict[str, tuple[str, str]] = {
    "window": ("model", "window"),
    "hidden_size": ("model", "hidden_size"),
    "layers": ("model", "num_layers"),
    "cell": ("model", "cell"),
    "calendar": ("model", "calendar"),
    "learning_rate": ("training", "learning_rate"),
    "short_window": ("detector", "short_window"),
    "long_window": ("detector", "long_window"),
    "fusion": ("detector", "fusion"),
    "threshold": ("detector", "threshold"),
}
# The evaluation fixes these: the series are univariate, the horizon is the command's.
_NOT_SEARCHABLE = {("model", "input_size"), ("model", "horizon")}

# The peephole cell is left out of the default spaces, not of what a space may name: it has no
# fused kernel (one Python step per timestep), so a trial with it costs several times the others
# and a small search on two shared cores cannot afford it.
DEFAULT_NAB_SPACE: dict[str, Any] = {
    "window": {"choices": [16, 32, 64]},
    "hidden_size": {"choices": [16, 32, 64]},
    "layers": {"low": 1, "high": 2},
    "cell": {"choices": ["lstm", "gru"]},
    "learning_rate": {"low": 3e-4, "high": 1e-2, "log": True},
    "calendar": {"choices": ["auto", "on", "off"]},
    "short_window": {"low": 10, "high": 120, "log": True},
    "long_window": {"low": 500, "high": 4000, "log": True},
    "fusion": {"choices": ["likelihood", "corroborated", "max"]},
    "threshold": {"low": 0.95, "high": 0.995},
}
DEFAULT_FORECAST_SPACE: dict[str, Any] = {
    "window": {"choices": [32, 64, 96]},
    "hidden_size": {"choices": [16, 32, 64]},
    "layers": {"low": 1, "high": 2},
    "cell": {"choices": ["lstm", "gru"]},
    "learning_rate": {"low": 3e-4, "high": 1e-2, "log": True},
    "calendar": {"choices": ["auto", "on", "off"]},
}


# ---- the search space ------------------------------------------------------------------------
def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _group_with(base: ModelGroup, updates: Mapping[tuple[str, str], Any]) -> ModelGroup:
    """``base`` with some ``(section, field)`` settings replaced, validated as ModelGroup."""
    body = base.model_dump(mode="json")
    for (section, name), value in updates.items():
        body[section][name] = value
    return ModelGroup.model_validate(body)


def _validation_reason(exc: ValidationError) -> str:
    return "; ".join(str(e["msg"]) for e in exc.errors())


@dataclass(frozen=True)
class SearchSpace:
    """Named settings to search (optuna distributions) and settings fixed for the whole search."""

    dimensions: dict[str, BaseDistribution]
    paths: dict[str, tuple[str, str]]  # every name (searched or fixed) -> (section, field)
    fixed: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # as written, for the study's record

    @classmethod
    def parse(cls, raw: object, base: ModelGroup) -> SearchSpace:
        """Check a space against the ModelGroup schema; a bad entry is a ValueError naming it.

        An entry is ``{"choices": [...]}``, ``{"low": a, "high": b[, "log": true]}`` (integers
        when both bounds are integers) or a plain value (fixed, not searched). Every choice and
        both bounds must make a valid group on their own; ``short_window``'s range must lie below
        ``long_window``'s, so that every combination is valid too.
        """
        if not isinstance(raw, Mapping) or not raw:
            raise ValueError("space: expected a non-empty table of settings")
        dimensions: dict[str, BaseDistribution] = {}
        paths: dict[str, tuple[str, str]] = {}
        fixed: dict[str, Any] = {}
        for name, spec in raw.items():
            path = _path_of(str(name))
            if path in paths.values():
                raise ValueError(f"space: {name}: {'.'.join(path)} is named twice")
            paths[name] = path
            if isinstance(spec, Mapping):
                dimensions[name] = _distribution(name, spec)
                values = _extremes(dimensions[name])
            else:
                fixed[name] = spec
                values = [spec]
            for value in values:
                try:
                    _group_with(base, {path: value})
                except ValidationError as exc:
                    reason = _validation_reason(exc)
                    raise ValueError(f"space: {name}: {value!r} is not valid: {reason}") from None
        space = cls(dimensions, paths, fixed, dict(raw))
        space._check_windows(base)
        return space

    def _range_of(self, path: tuple[str, str], base: ModelGroup) -> tuple[float, float]:
        for name, where in self.paths.items():
            if where != path:
                continue
            if name in self.fixed:
                return float(self.fixed[name]), float(self.fixed[name])
            values = [float(v) for v in _extremes(self.dimensions[name])]
            return min(values), max(values)
        value = float(getattr(getattr(base, path[0]), path[1]))
        return value, value

    def _check_windows(self, base: ModelGroup) -> None:
        _, short_high = self._range_of(("detector", "short_window"), base)
        long_low, _ = self._range_of(("detector", "long_window"), base)
        if short_high >= long_low:
            raise ValueError(
                f"space: short_window (up to {short_high:g}) must stay below long_window"
                f" (from {long_low:g}) for every combination"
            )

    def group(self, base: ModelGroup, params: Mapping[str, Any], name: str) -> ModelGroup:
        """The group a trial's ``params`` describe: ``base``, the fixed settings, the params."""
        updates = {self.paths[k]: v for k, v in {**self.fixed, **params}.items()}
        try:
            group = _group_with(base, updates)
        except ValidationError as exc:
            raise ValueError(f"settings {dict(params)} make no valid group: "
                             f"{_validation_reason(exc)}") from None  # fmt: skip
        return group.model_copy(update={"name": name})

    def base_params(self, base: ModelGroup) -> dict[str, Any] | None:
        """``base``'s own values as a trial, or None when one lies outside the space."""
        params = {}
        for name, distribution in self.dimensions.items():
            section, key = self.paths[name]
            value = getattr(getattr(base, section), key)
            if isinstance(distribution, CategoricalDistribution):
                inside = value in distribution.choices
            else:
                assert isinstance(distribution, IntDistribution | FloatDistribution)
                inside = distribution.low <= value <= distribution.high
            if not inside:
                return None
            params[name] = value
        return params


def _path_of(name: str) -> tuple[str, str]:
    if name in ALIASES:
        return ALIASES[name]
    section, dot, key = name.partition(".")
    sections = {"model": "model", "training": "training", "detector": "detector"}
    if not dot or section not in sections:
        known = ", ".join(sorted(ALIASES))
        raise ValueError(
            f"space: unknown setting {name!r}; use one of {known} or model.X, training.X,"
            " detector.X"
        )
    fields = ModelGroup.model_fields[section].annotation
    assert fields is not None
    if key not in fields.model_fields:
        raise ValueError(f"space: {name}: {section} has no setting {key!r}")
    if (section, key) in _NOT_SEARCHABLE:
        raise ValueError(f"space: {name} is fixed by the evaluation")
    return section, key


def _distribution(name: str, spec: Mapping[str, Any]) -> BaseDistribution:
    keys = set(spec)
    if keys == {"choices"}:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"space: {name}: choices must be a non-empty list")
        if any(not isinstance(c, str | int | float | bool) for c in choices):
            raise ValueError(f"space: {name}: choices must be strings, numbers or booleans")
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError(f"space: {name}: choices repeat")
        return CategoricalDistribution(choices)
    if keys in ({"low", "high"}, {"low", "high", "log"}):
        low, high, log = spec["low"], spec["high"], spec.get("log", False)
        if not (_is_number(low) and _is_number(high)):
            raise ValueError(f"space: {name}: low and high must be numbers")
        if not isinstance(log, bool):
            raise ValueError(f"space: {name}: log must be true or false")
        if not low < high:
            raise ValueError(f"space: {name}: low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise ValueError(f"space: {name}: a log range needs low > 0")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise ValueError(
        f"space: {name}: expected {{choices: [...]}}, {{low, high[, log]}} or a fixed value,"
        f" got keys {sorted(keys)}"
    )


def _extremes(distribution: BaseDistribution) -> list[Any]:
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    assert isinstance(distribution, IntDistribution | FloatDistribution)
    return [distribution.low, distribution.high]


def load_space(path: Path | None, default: Mapping[str, Any], base: ModelGroup) -> SearchSpace:
    """The space in ``path`` (JSON, or TOML for ``.toml``), else ``default``; validated."""
    if path is None:
        return SearchSpace.parse(dict(default), base)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"space file not found: {path}") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ValueError(f"{path}: not valid {kind}: {exc}") from None
    return SearchSpace.parse(raw, base)


# ---- the series -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    """One series to replay: ``seconds`` (epoch) may be None for a CSV without timestamps."""

    name: str
    values: FloatArray
    seconds: FloatArray | None
    timestamps: npt.NDArray[np.datetime64] | None = None

    def digest(self) -> str:
        """What the replay depends on: the values and their times."""
        h = hashlib.sha256(self.values.tobytes())
        if self.seconds is not None:
            h.update(self.seconds.tobytes())
        return h.hexdigest()[:16]


def _spread_pick(names: Sequence[str], count: int | None) -> list[str]:
    """``count`` names spread evenly over the sorted list (every category gets some)."""
    ordered = sorted(names)
    if count is None or count >= len(ordered):
        return ordered
    return [ordered[(i * len(ordered)) // count] for i in range(count)]


def _seconds(timestamps: npt.NDArray[np.datetime64]) -> FloatArray:
    return timestamps.astype("datetime64[us]").astype(np.int64) / 1e6


def read_nab_series(
    data_dir: Path, windows: Windows, max_files: int | None, max_rows: int | None
) -> tuple[list[Series], Windows, list[str]]:
    """The labelled series of a NAB corpus, optionally fewer and shorter (first ``max_rows``
    rows), with their windows clipped to the rows kept; plus the unlabelled files skipped."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir}")
    present = {p.relative_to(data_dir).as_posix(): p for p in data_dir.rglob("*.csv")}
    labelled = [name for name in present if name in windows]
    skipped = sorted(name for name in present if name not in windows)
    if not labelled:
        raise ValueError(f"no data file under {data_dir} has label windows")
    series, kept = [], {}
    for name in _spread_pick(labelled, max_files):
        data = read_data_series(present[name], name)
        stamps, values = data.timestamps[:max_rows], data.values[:max_rows]
        last = stamps.max()
        kept[name] = [(start, min(end, last)) for start, end in windows[name] if start <= last]
        series.append(Series(name, values, _seconds(stamps), stamps))
    return series, kept, skipped


def read_forecast_series(
    paths: Sequence[Path], column: str, max_files: int | None, max_rows: int | None
) -> list[Series]:
    """One column of each CSV (as ``vigil eval forecast`` reads it), optionally shortened."""
    from vigil.bench.forecast_eval import read_series_column

    by_name = {str(p): p for p in paths}
    if len(by_name) != len(paths):
        raise ValueError("a file is given twice")
    series = []
    for name in _spread_pick(list(by_name), max_files):
        values, stamps = read_series_column(by_name[name], column)
        values = values[:max_rows]
        seconds = None
        if stamps is not None:
            seconds = _seconds(parse_timestamps(stamps[:max_rows]))
        series.append(Series(name, values, seconds))
    return series


# ---- replaying one series (in a worker process) -----------------------------------------------
@dataclass(frozen=True)
class ReplayJob:
    """Everything a worker needs to replay one series under one configuration."""

    objective: Literal["nab", "forecast"]
    group: dict[str, Any]
    series: Series
    seed: int
    horizon: int


def replay_series(job: ReplayJob) -> FloatArray:
    """NAB: the anomaly score of every row, as ``vigil eval nab`` writes it. Forecast: one
    number, the NRMSE at step ``horizon`` as ``vigil eval forecast`` computes it."""
    from vigil.bench.replay_harness import VigilDetector, VigilForecaster

    group = ModelGroup.model_validate(job.group)
    series = job.series
    if job.objective == "nab":
        from vigil.bench.nab.runner import detect_series

        detector = VigilDetector(group, seed=job.seed)
        return detect_series(detector, series.values, "vigil", series.timestamps)
    from vigil.bench.forecast_eval import evaluate_series

    forecaster = VigilForecaster(job.horizon, group, seed=job.seed)
    evaluation = evaluate_series(
        series.name,
        series.values,
        {"vigil": forecaster},
        job.horizon,
        steps=[job.horizon],
        timestamps=series.seconds,
    )
    nrmse = evaluation.metrics["vigil"][job.horizon].nrmse
    if nrmse is None:
        raise ValueError(f"{series.name}: no NRMSE (too short, or constant)")
    return np.array([nrmse])


def _one_thread_per_worker() -> None:
    """Worker processes share the cores: one numeric thread each."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = "1"


class ReplayStore:
    """Replays by (configuration, series), computed once: in memory, and on disk under a study
    directory so that a resumed search replays nothing twice. Missing ones run in ``workers``
    processes (spawned, as ``vigil eval nab`` does), the longest series first."""

    def __init__(self, directory: Path | None, workers: int) -> None:
        self.directory = directory
        self.workers = workers
        self.memory: dict[str, FloatArray] = {}
        self.replayed = 0  # series actually replayed by this process (not found stored)
        self._pool: Any = None

    def _key(self, job: ReplayJob) -> str:
        group = {**job.group, "name": "-"}
        text = json.dumps(
            [job.objective, group, job.series.name, job.series.digest(), job.seed, job.horizon],
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _stored(self, key: str) -> FloatArray | None:
        if key in self.memory:
            return self.memory[key]
        if self.directory is not None:
            path = self.directory / f"{key}.npy"
            if path.exists():
                self.memory[key] = np.load(path)
                return self.memory[key]
        return None

    def _store(self, key: str, result: FloatArray) -> None:
        self.memory[key] = result
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            partial = self.directory / f"{key}.tmp.npy"
            np.save(partial, result)
            partial.replace(self.directory / f"{key}.npy")

    def results(self, jobs: Sequence[ReplayJob]) -> dict[str, FloatArray]:
        """Per series name, the replay's result."""
        keys = {job.series.name: self._key(job) for job in jobs}
        out: dict[str, FloatArray] = {}
        missing = []
        for job in jobs:
            stored = self._stored(keys[job.series.name])
            if stored is None:
                missing.append(job)
            else:
                out[job.series.name] = stored
        missing.sort(key=lambda j: j.series.values.size, reverse=True)
        for job, result in zip(missing, self._run(missing), strict=True):
            self._store(keys[job.series.name], result)
            out[job.series.name] = result
            self.replayed += 1
        return out

    def _run(self, jobs: Sequence[ReplayJob]) -> Iterable[FloatArray]:
        """Results in job order, each as soon as it is ready (so a stopped run keeps them)."""
        if self.workers <= 1 or len(jobs) <= 1:
            return map(replay_series, jobs)
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(self.workers, _one_thread_per_worker)
        return self._pool.imap(replay_series, jobs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


# ---- the objectives -------------------------------------------------------------------------
Tally = tuple[float, float, float]  # summed over held-out series, pooled by the objective


class Objective(Protocol):
    kind: Literal["nab", "forecast"]
    direction: Literal["maximize", "minimize"]
    horizon: int

    def fit(self, results: Mapping[str, FloatArray]) -> tuple[float, float | None]:
        """The figure over these series, and the NAB threshold chosen on them (if any)."""
        ...

    def tally(self, results: Mapping[str, FloatArray], threshold: float | None) -> Tally:
        """Held-out series scored with a threshold chosen elsewhere, ready to pool."""
        ...

    def pooled(self, tally: Tally) -> float: ...


class NabObjective:
    """NAB's normalised score of one profile; the threshold optimised on the series scored."""

    kind: Literal["nab", "forecast"] = "nab"
    direction: Literal["maximize", "minimize"] = "maximize"
    horizon = 1

    def __init__(self, series: Sequence[Series], windows: Windows, cost: CostMatrix) -> None:
        self.windows = windows
        self.cost = cost
        self.timestamps = {s.name: s.timestamps for s in series}

    def _files(self, results: Mapping[str, FloatArray]) -> list[ScoredFile]:
        files = []
        for name in sorted(results):
            stamps = self.timestamps[name]
            assert stamps is not None
            files.append(ScoredFile(name, stamps, results[name]))
        return files

    def fit(self, results: Mapping[str, FloatArray]) -> tuple[float, float | None]:
        result = score_corpus(self._files(results), self.windows, {"p": self.cost})["p"]
        return result.normalised, result.threshold

    def tally(self, results: Mapping[str, FloatArray], threshold: float | None) -> Tally:
        assert threshold is not None
        files = self._files(results)
        result = score_corpus(files, self.windows, {"p": self.cost}, {"p": threshold})["p"]
        return result.raw, result.null, result.perfect

    def pooled(self, tally: Tally) -> float:
        return normalised_score(*tally)


class ForecastObjective:
    """The mean over series of the NRMSE at step ``horizon`` (nothing is chosen but the
    configuration, so a held-out series is simply one the search did not see)."""

    kind: Literal["nab", "forecast"] = "forecast"
    direction: Literal["maximize", "minimize"] = "minimize"

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon

    def fit(self, results: Mapping[str, FloatArray]) -> tuple[float, float | None]:
        return float(np.mean([r[0] for r in results.values()])), None

    def tally(self, results: Mapping[str, FloatArray], threshold: float | None) -> Tally:
        return float(sum(r[0] for r in results.values())), float(len(results)), 0.0

    def pooled(self, tally: Tally) -> float:
        return tally[0] / tally[1]


# ---- the search -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """One search: chosen on ``train``, reported on ``test`` (empty for the final search)."""

    name: str
    train: list[str]
    test: list[str]


def plan_splits(names: Sequence[str], folds: int, protocol: SearchProtocol) -> list[Split]:
    """The searches to run; the LAST one gives the configuration written out."""
    if folds > len(names):
        raise ValueError(f"{folds} folds need at least {folds} series, got {len(names)}")
    fold = folds_of(names, folds)
    ordered = sorted(names)

    def split(held: int) -> Split:
        train = [n for n in ordered if fold[n] != held]
        test = [n for n in ordered if fold[n] == held]
        return Split(f"fold-{held}-of-{folds}", train, test)

    if protocol == "holdout":
        return [split(folds - 1)]
    return [split(k) for k in range(folds)] + [Split("all", ordered, [])]


@dataclass(frozen=True)
class FoldOutcome:
    """What one search chose and what that scored, in-sample and (if any) held out."""

    split: Split
    params: dict[str, Any]
    in_sample: float
    held_out: float | None
    threshold: float | None
    reference_in_sample: float
    reference_held_out: float | None


@dataclass(frozen=True)
class TuneOutcome:
    """The whole run: per search, the pooled held-out figures, the group to deploy."""

    objective: str
    protocol: SearchProtocol
    folds: list[FoldOutcome]
    held_out: float | None  # pooled over the searches with held-out series
    reference_held_out: float | None
    group: ModelGroup
    best: FrozenTrial
    top: list[FrozenTrial]
    threshold: float | None
    replayed: int  # series replays this run actually computed


def _trial_seed(seed: int, number: int) -> int:
    digest = hashlib.sha256(f"vigil-tune:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _open_study(
    split: Split,
    storage: Any,
    direction: Literal["maximize", "minimize"],
    setup: Mapping[str, Any],
) -> optuna.Study:
    """Create the split's study, or load it after checking it was made by the same setup."""
    record = json.loads(json.dumps({**setup, "train": split.train, "test": split.test}))
    study = optuna.create_study(
        study_name=split.name, storage=storage, direction=direction, load_if_exists=True
    )
    known = study.user_attrs.get("setup")
    if known is None:
        study.set_user_attr("setup", record)
    elif known != record:
        changed = sorted(k for k in record if known.get(k) != record[k])
        raise ValueError(
            f"the study directory holds {split.name} of another search (differs in:"
            f" {', '.join(changed)}); use a new --study-dir"
        )
    for trial in study.trials:  # a run stopped mid-trial leaves it RUNNING
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL)
    return study


def _completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def run_search(
    *,
    objective: Objective,
    series: Sequence[Series],
    space: SearchSpace,
    base: ModelGroup,
    name: str,
    trials: int,
    folds: int,
    protocol: SearchProtocol = "nested",
    seed: int = 0,
    workers: int = 2,
    study_dir: Path | None = None,
    startup_trials: int = 10,
    top: int = 5,
    setup: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> TuneOutcome:
    """Run every split's search (see the module doc), then score the choices held out."""
    if trials < 1:
        raise ValueError(f"need at least 1 trial, got {trials}")
    by_name = {s.name: s for s in series}
    splits = plan_splits(list(by_name), folds, protocol)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage: Any = None
    if study_dir is not None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        study_dir.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(study_dir / "journal.log")))
    record = {
        **(setup or {}),
        "objective": objective.kind,
        "series": {s.name: s.digest() for s in series},
        "space": space.source,
        "base": base.model_dump(mode="json"),
        "seed": seed,
        "folds": folds,
        "protocol": protocol,
        "startup_trials": startup_trials,
    }
    store = ReplayStore(study_dir / "replays" if study_dir is not None else None, workers)

    def jobs(group: ModelGroup, names: Sequence[str]) -> list[ReplayJob]:
        body = group.model_dump(mode="json")
        return [ReplayJob(objective.kind, body, by_name[n], seed, objective.horizon) for n in names]

    studies = [_open_study(s, storage, objective.direction, record) for s in splits]
    todo = sum(max(0, trials - len(_completed(study))) for study in studies)
    bar = tqdm(total=todo, desc="tune", unit="trial", file=sys.stderr, disable=not progress)
    base_params = space.base_params(base)
    try:
        for split, study in zip(splits, studies, strict=True):
            bar.set_description(split.name)
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if base_params is not None and not _completed(study) and not waiting:
                study.enqueue_trial(base_params)
            while len(_completed(study)) < trials:
                study.sampler = optuna.samplers.TPESampler(
                    seed=_trial_seed(seed, len(study.trials)), n_startup_trials=startup_trials
                )
                trial = study.ask(dict(space.dimensions))
                group = space.group(base, trial.params, name)
                value, threshold = objective.fit(store.results(jobs(group, split.train)))
                trial.set_user_attr("threshold", threshold)
                trial.set_user_attr("series", split.train)
                study.tell(trial, value)
                bar.update()
                bar.set_postfix(best=f"{study.best_value:.4g}")
        bar.close()  # before the held-out replays: nothing more to count
        outcomes = []
        pooled: Tally = (0.0, 0.0, 0.0)
        reference_pooled: Tally = (0.0, 0.0, 0.0)
        for split, study in zip(splits, studies, strict=True):
            best = study.best_trial
            threshold = best.user_attrs.get("threshold")
            reference_fit = objective.fit(store.results(jobs(base, split.train)))
            held_out = reference_held_out = None
            if split.test:
                group = space.group(base, best.params, name)
                tally = objective.tally(store.results(jobs(group, split.test)), threshold)
                reference = objective.tally(store.results(jobs(base, split.test)), reference_fit[1])
                held_out, reference_held_out = objective.pooled(tally), objective.pooled(reference)
                pooled = _add(pooled, tally)
                reference_pooled = _add(reference_pooled, reference)
            outcomes.append(
                FoldOutcome(
                    split,
                    dict(best.params),
                    float(best.value or 0.0),
                    held_out,
                    threshold,
                    reference_fit[0],
                    reference_held_out,
                )
            )
    finally:
        bar.close()
        store.close()
    final = studies[-1]
    ranked = sorted(
        _completed(final),
        key=lambda t: (t.value or 0.0) * (1.0 if objective.direction == "minimize" else -1.0),
    )
    tested = any(s.test for s in splits)
    return TuneOutcome(
        objective=objective.kind,
        protocol=protocol,
        folds=outcomes,
        held_out=objective.pooled(pooled) if tested else None,
        reference_held_out=objective.pooled(reference_pooled) if tested else None,
        group=space.group(base, final.best_trial.params, name),
        best=final.best_trial,
        top=ranked[:top],
        threshold=final.best_trial.user_attrs.get("threshold"),
        replayed=store.replayed,
    )


def _add(a: Tally, b: Tally) -> Tally:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]
