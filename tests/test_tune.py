"""`vigil tune`: the search space is checked against the group schema, a search writes a valid
group whose values come from the space, a rerun resumes instead of repeating trials, and the
series held out never influence what is chosen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from typer.testing import CliRunner

from vigil.bench.replay_harness import forecast_group, nab_group
from vigil.bench.tune import DEFAULT_NAB_SPACE, SearchSpace, load_space, plan_splits
from vigil.bench.tune_cli import app
from vigil.settings import ModelGroup

# Small and fast: tiny models, a few training steps; the values are what the test checks.
TINY_SPACE: dict[str, Any] = {
    "window": {"choices": [8, 12]},
    "hidden_size": {"choices": [4, 8]},
    "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
    "short_window": {"low": 5, "high": 20},
    "long_window": {"low": 100, "high": 300},
    "training.min_examples": 32,
    "training.steps_per_round": 3,
}
TINY_FORECAST_SPACE: dict[str, Any] = {
    "window": {"choices": [8, 12]},
    "hidden_size": {"choices": [4, 8]},
    "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
    "training.min_examples": 32,
    "training.steps_per_round": 3,
}
ROWS = 180


def stamp(i: int) -> str:
    minutes = 5 * i
    return f"2014-01-{1 + minutes // 1440:02d} {minutes // 60 % 24:02d}:{minutes % 60:02d}:00"


def write_series(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["timestamp,value"] + [f"{stamp(i)},{v!r}" for i, v in enumerate(values.tolist())]
    path.write_text("\n".join(lines) + "\n")


def seasonal(seed: int, spike_at: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(ROWS)
    values = 10 + 3 * np.sin(2 * np.pi * t / 24) + 0.2 * rng.normal(size=ROWS)
    if spike_at is not None:
        values[spike_at : spike_at + 3] += 12
    return values


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Three NAB-format files in two categories, a window each, and the space file."""
    data = tmp_path / "data"
    windows = {}
    for i, name in enumerate(["cat_a/one.csv", "cat_a/two.csv", "cat_b/three.csv"]):
        spike = 120 + 10 * i
        write_series(data / name, seasonal(i, spike))
        windows[name] = [[f"{stamp(spike - 6)}.000000", f"{stamp(spike + 6)}.000000"]]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(windows))
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TINY_SPACE))
    return data, labels, space


def tune(args: list[str]) -> tuple[dict[str, Any], str]:
    result = CliRunner().invoke(app, [*args, "--workers", "1", "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1]), result.output


def nab_args(corpus: tuple[Path, Path, Path], *extra: str) -> list[str]:
    data, labels, space = corpus
    return ["nab", "--data", str(data), "--labels", str(labels), "--space", str(space), *extra]


def load(study_dir: Path, name: str) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(study_dir / "journal.log")))
    return optuna.load_study(study_name=name, storage=storage)


# ---- the space --------------------------------------------------------------------------------
def test_the_default_space_is_valid_and_contains_the_default_group() -> None:
    space = SearchSpace.parse(DEFAULT_NAB_SPACE, nab_group())
    assert set(space.dimensions) == set(DEFAULT_NAB_SPACE)
    assert space.base_params(nab_group()) is not None  # trial 0 of every search is the default
    params = space.base_params(nab_group()) or {}
    assert space.group(nab_group(), params, "x").model_dump(exclude={"name"}) == nab_group(
    ).model_dump(exclude={"name"})  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"cell": {"choices": ["lstm", "transformer"]}}, "cell: 'transformer' is not valid"),
        ({"window": {"low": 64, "high": 16}}, "low (64) must be below high (16)"),
        ({"window": {"low": 1, "high": 16}}, "window: 1 is not valid"),
        ({"learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs low > 0"),
        (
            {"short_window": {"low": 10, "high": 900}, "long_window": {"low": 600, "high": 4000}},
            "short_window (up to 900) must stay below long_window (from 600)",
        ),
        ({"model.horizon": {"choices": [1, 2]}}, "fixed by the evaluation"),
        ({"model.colour": 3}, "model has no setting 'colour'"),
        ({"depth": 3}, "unknown setting 'depth'"),
        ({"window": {"choices": []}}, "choices must be a non-empty list"),
        ({"window": {"from": 8, "to": 16}}, "expected {choices"),
        ({}, "non-empty table"),
    ],
)
def test_a_bad_space_names_the_setting_and_why(entry: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match="space") as caught:
        SearchSpace.parse(entry, nab_group())
    assert reason in str(caught.value)


def test_a_space_file_may_be_toml(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text('cell = {choices = ["gru", "lstm"]}\n[layers]\nlow = 1\nhigh = 3\n')
    space = load_space(path, DEFAULT_NAB_SPACE, forecast_group(5))
    assert set(space.dimensions) == {"cell", "layers"}
    group = space.group(forecast_group(5), {"cell": "gru", "layers": 3}, "x")
    assert (group.model.cell, group.model.num_layers, group.model.horizon) == ("gru", 3, 5)


def test_a_bad_space_file_is_an_error_exit_2(corpus: tuple[Path, Path, Path]) -> None:
    space = corpus[2]
    space.write_text(json.dumps({"fusion": {"choices": ["likelihood", "vote"]}}))
    result = CliRunner().invoke(app, nab_args(corpus, "--workers", "1"))
    assert result.exit_code == 2
    assert "error: space: fusion: 'vote' is not valid" in result.output
    space.write_text("{not json")
    result = CliRunner().invoke(app, nab_args(corpus))
    assert result.exit_code == 2 and "not valid JSON" in result.output
    space.write_text(json.dumps(TINY_SPACE))
    missing = CliRunner().invoke(app, nab_args(corpus, "--folds", "4"))
    assert missing.exit_code == 2 and "4 folds need at least 4 series" in missing.output


# ---- the splits -------------------------------------------------------------------------------
def test_splits_hold_every_series_out_once_and_the_last_search_sees_all() -> None:
    names = [f"s{i}" for i in range(7)]
    nested = plan_splits(names, 3, "nested")
    assert [s.name for s in nested] == ["fold-0-of-3", "fold-1-of-3", "fold-2-of-3", "all"]
    for split in nested[:-1]:
        assert not set(split.train) & set(split.test)
        assert sorted(split.train + split.test) == names
    assert sorted(n for s in nested[:-1] for n in s.test) == names
    assert nested[-1].train == names and nested[-1].test == []
    (holdout,) = plan_splits(names, 3, "holdout")
    assert holdout.test == ["s2", "s5"]  # file i in fold i mod 3, as bench/nab/crossval.py


# ---- a search ---------------------------------------------------------------------------------
def test_a_tiny_nab_search_writes_a_valid_group_from_the_space(
    corpus: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "tuned.json"
    payload, _ = tune(nab_args(corpus, "--trials", "2", "--out", str(out), "--name", "web"))
    group = ModelGroup.model_validate(json.loads(out.read_text()))
    assert payload["group"] == json.loads(out.read_text())
    assert group.name == "web"
    assert group.model.window in (8, 12) and group.model.hidden_size in (4, 8)
    assert 1e-3 <= group.training.learning_rate <= 1e-2
    assert 5 <= group.detector.short_window <= 20 and 100 <= group.detector.long_window <= 300
    assert (group.training.min_examples, group.training.steps_per_round) == (32, 3)
    # not searched: the base group's (nab_group) values
    assert group.model.calendar == nab_group().model.calendar
    assert group.detector.fusion == "likelihood"
    best = payload["best"]
    assert isinstance(best["in_sample"], float) and isinstance(best["held_out"], float)
    assert payload["default"]["in_sample"] is not None
    assert 0 < best["threshold"] <= 1.1
    # every series held out exactly once, by a search whose trials only read the others
    searches = payload["searches"]
    held = sorted(n for s in searches for n in s["test"])
    assert held == ["cat_a/one.csv", "cat_a/two.csv", "cat_b/three.csv"]
    assert len(payload["top"]) == 2


def test_a_rerun_resumes_the_study_and_runs_only_the_new_trials(
    corpus: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    study_dir = tmp_path / "study"
    args = nab_args(corpus, "--protocol", "holdout", "--study-dir", str(study_dir))
    first, _ = tune([*args, "--trials", "2"])
    before = load(study_dir, "fold-2-of-3").trials
    assert [t.state for t in before] == [TrialState.COMPLETE] * 2

    again, _ = tune([*args, "--trials", "2"])  # nothing to do: no trial, no replay
    assert again["replays"] == 0 and again["best"] == first["best"]

    more, _ = tune([*args, "--trials", "3"])
    after = load(study_dir, "fold-2-of-3").trials
    assert len(after) == 3 and all(t.state == TrialState.COMPLETE for t in after)
    for old, new in zip(before, after, strict=False):
        assert (new.params, new.value, new.datetime_complete) == (
            old.params,
            old.value,
            old.datetime_complete,
        )
    # one new configuration: its 2 search series, plus its held-out one if it became the best
    assert more["replays"] in (2, 3)


def test_a_rerun_with_another_setup_is_refused(
    corpus: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    study_dir = tmp_path / "study"
    args = nab_args(corpus, "--protocol", "holdout", "--study-dir", str(study_dir))
    tune([*args, "--trials", "1"])
    result = CliRunner().invoke(app, [*args, "--trials", "1", "--seed", "7", "--workers", "1"])
    assert result.exit_code == 2
    assert "of another search (differs in: seed)" in result.output


def test_the_held_out_series_never_influence_the_choice(tmp_path: Path) -> None:
    """Changing the held-out series changes nothing in the search (trial for trial) but its
    held-out figure; changing a search series changes the search: the check can fail."""
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TINY_FORECAST_SPACE))
    names = ["a.csv", "b.csv", "c.csv"]  # holdout protocol, 3 folds: c.csv is held out

    def search(run: str, changed: str | None) -> tuple[dict[str, Any], list[Any]]:
        folder = tmp_path / run
        for i, name in enumerate(names):
            values = seasonal(i)
            if name == changed:
                values = values + np.linspace(0, 4, ROWS)  # a trend the model must follow
            write_series(folder / name, values)
        study_dir = folder / "study"
        files = [str(folder / n) for n in names]
        payload, _ = tune(
            ["forecast", *files, "--horizon", "2", "--space", str(space), "--trials", "3",
             "--startup-trials", "2", "--protocol", "holdout", "--study-dir", str(study_dir)]
        )  # fmt: skip
        trials = load(study_dir, "fold-2-of-3").trials
        for trial in trials:  # the recorded split: only the search series were read
            assert [Path(p).name for p in trial.user_attrs["series"]] == ["a.csv", "b.csv"]
        return payload, [(t.params, t.value) for t in trials]

    plain, plain_trials = search("plain", None)
    held, held_trials = search("held", "c.csv")
    _, seen_trials = search("seen", "a.csv")
    assert held_trials == plain_trials
    assert held["best"]["in_sample"] == plain["best"]["in_sample"]
    assert held["best"]["held_out"] != plain["best"]["held_out"]
    assert seen_trials != plain_trials
