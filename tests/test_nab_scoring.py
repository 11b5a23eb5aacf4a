"""The NAB scorer reproduces NAB's published figures exactly, sweeps thresholds as NAB does,
and normalises null to 0 and perfect to 100; `vigil eval nab` and `nab-score` end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vigil.bench.eval_cli import app
from vigil.bench.nab.corpus import (
    read_profiles,
    read_published_scores,
    read_result_series,
    read_results_corpus,
    read_thresholds,
    read_windows,
)
from vigil.bench.nab.evaluation import ScoredFile, layouts_for, score_corpus
from vigil.bench.nab.scoring import (
    NAB_PROFILES,
    CostMatrix,
    layout_file,
    probation_length,
    scaled_sigmoid,
    score_file,
)
from vigil.bench.nab.sweep import NO_DETECTION, threshold_curve

PUBLISHED_DETECTORS = ["numenta", "windowedGaussian"]


def nab_root(shared_data: Path) -> Path:
    return shared_data / "nab"


def printed_precision(published: np.ndarray) -> np.ndarray:
    """Half a unit of the 12th significant digit: how far NAB's printed value may be off."""
    magnitude = np.where(published == 0, 1.0, np.abs(published))
    return 0.5 * 10.0 ** (np.floor(np.log10(magnitude)) - 11) * (1 + 1e-9)


def assert_printed_equal(
    mine: np.ndarray | float, published: np.ndarray | float, what: str
) -> None:
    mine_a = np.atleast_1d(np.asarray(mine, dtype=np.float64))
    pub_a = np.atleast_1d(np.asarray(published, dtype=np.float64))
    exact_zero = pub_a == 0
    assert np.array_equal(mine_a[exact_zero], pub_a[exact_zero]), f"{what}: zeros differ"
    off = np.abs(mine_a - pub_a) > printed_precision(pub_a)
    assert not off.any(), (
        f"{what}: rows {np.flatnonzero(off)[:5]} {mine_a[off][:5]} vs {pub_a[off][:5]}"
    )


@pytest.mark.parametrize("detector", PUBLISHED_DETECTORS)
def test_reproduces_nab_published_rows_and_file_scores(shared_data: Path, detector: str) -> None:
    root = nab_root(shared_data)
    windows = read_windows(root / "labels" / "combined_windows.json")
    profiles = read_profiles(root / "config" / "profiles.json")
    thresholds = read_thresholds(root / "config" / "thresholds.json", detector)
    results = read_results_corpus(root / "results", detector)
    assert len(results) == 42
    assert set(profiles) == set(NAB_PROFILES)
    for name, cost in profiles.items():
        assert NAB_PROFILES[name] == cost
        published = read_published_scores(
            root / "results" / detector / f"{detector}_{name}_scores.csv"
        )
        assert set(published) == {r.relative_path for r in results}
        for series in results:
            layout = layout_file(series.timestamps, windows[series.relative_path])
            assert series.labels is not None
            assert np.array_equal(layout.labels.astype(np.int64), series.labels)
            mine = score_file(layout, series.anomaly_scores, thresholds[name], cost)
            theirs = published[series.relative_path]
            where = f"{detector}/{name}/{series.relative_path}"
            assert (mine.tp, mine.tn, mine.fp, mine.fn, mine.total) == (
                theirs.tp,
                theirs.tn,
                theirs.fp,
                theirs.fn,
                theirs.total,
            ), where
            assert_printed_equal(mine.score, theirs.score, where + " Score")
            assert_printed_equal(thresholds[name], theirs.threshold, where + " Threshold")
            assert_printed_equal(mine.row_scores, series.row_scores[name], where + " S(t)")


def _tiny_file() -> tuple[np.ndarray, list[tuple[np.datetime64, np.datetime64]]]:
    timestamps = np.datetime64("2020-01-01T00:00") + np.arange(20) * np.timedelta64(1, "m")
    return timestamps, [(timestamps[10], timestamps[13])]


def sigmoid_reward(position: float) -> float:
    """The scaled sigmoid written out: 2 / (1 + e^(5 p)) - 1."""
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def test_threshold_sweep_on_a_hand_made_file() -> None:
    timestamps, windows = _tiny_file()
    layout = layout_file(timestamps, windows, probation_percent=0.0)
    cost = CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
    scores = np.full(20, 0.1)
    scores[5] = 0.9  # before the window: a plain false positive
    scores[11] = 0.7  # second row of the four-row window
    scores[16] = 0.5  # three rows after the window's last row
    max_tp = sigmoid_reward(-1.0)
    fp_before = -0.11
    tp_row_11 = sigmoid_reward(-(13 - 11 + 1) / 4) / max_tp
    fp_row_16 = 0.11 * sigmoid_reward(abs(13 - 16) / 3)

    curve = threshold_curve([(layout, scores)], cost)

    assert curve.thresholds.tolist() == [NO_DETECTION, 0.9, 0.7, 0.5, 0.1]
    expected_top = [
        -1.0,
        -1.0 + fp_before,
        fp_before + tp_row_11,
        fp_before + tp_row_11 + fp_row_16,
    ]
    np.testing.assert_allclose(curve.scores[:4], expected_top, rtol=0, atol=1e-12)
    # at 0.1 every row fires: the window pays its first row, every other row outside costs
    everything = 1.0 + sum(
        fp_before if i < 10 else 0.11 * sigmoid_reward(abs(13 - i) / 3)
        for i in range(20)
        if not 10 <= i <= 13
    )
    assert curve.scores[4] == pytest.approx(everything, abs=1e-12)
    assert curve.tp.tolist() == [0, 0, 1, 1, 4] and curve.fp.tolist() == [0, 1, 1, 2, 16]
    assert (curve.tn + curve.fp).tolist() == [16] * 5 and (curve.tp + curve.fn).tolist() == [4] * 5
    best_threshold, best_score = curve.best()
    assert best_threshold == 0.7 and best_score == pytest.approx(fp_before + tp_row_11)
    # the curve agrees with scoring the file directly at every threshold
    for threshold, score in zip(curve.thresholds, curve.scores, strict=True):
        assert score_file(layout, scores, threshold, cost).score == pytest.approx(score, abs=1e-12)


def test_only_the_first_detection_in_a_window_counts_and_probation_is_ignored() -> None:
    timestamps, windows = _tiny_file()
    cost = NAB_PROFILES["standard"]
    layout = layout_file(timestamps, windows, probation_percent=0.0)
    one = np.zeros(20)
    one[11] = 1.0
    three = one.copy()
    three[[12, 13]] = 1.0
    assert score_file(layout, three, 0.5, cost).score == score_file(layout, one, 0.5, cost).score
    assert score_file(layout, three, 0.5, cost).tp == 3
    # with a 30% probation the first 6 rows are never scored: a detection there costs nothing
    probation_layout = layout_file(timestamps, windows, probation_percent=0.3)
    assert probation_layout.probation == probation_length(20, 0.3) == 6
    early = np.zeros(20)
    early[2] = 1.0
    assert score_file(probation_layout, early, 0.5, cost).score == -cost.fn_weight
    assert score_file(layout, early, 0.5, cost).score == -cost.fn_weight - cost.fp_weight
    # ties in the sweep go to the highest threshold
    tied = np.zeros(20)
    tied[11] = 0.8
    tied[3] = 0.2  # lowering the threshold to 0.2 only adds a false positive
    curve = threshold_curve([(layout, tied)], cost)
    assert curve.best()[0] == 0.8


def test_scaled_sigmoid_landmarks() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(3.5) == -1.0


def _corpus(shared_data: Path) -> tuple[list[ScoredFile], dict]:
    root = nab_root(shared_data)
    windows = read_windows(root / "labels" / "combined_windows.json")
    results = read_results_corpus(root / "results", "numenta")
    return [ScoredFile(r.relative_path, r.timestamps, r.anomaly_scores) for r in results], windows


def test_normalisation_null_is_zero_and_perfect_is_one_hundred(shared_data: Path) -> None:
    files, windows = _corpus(shared_data)
    layouts = layouts_for(files, windows)
    silent = [ScoredFile(f.relative_path, f.timestamps, np.zeros(f.timestamps.size)) for f in files]
    perfect = []
    for f in files:
        scores = np.zeros(f.timestamps.size)
        scores[[span.first for span in layouts[f.relative_path].spans]] = 1.0
        perfect.append(ScoredFile(f.relative_path, f.timestamps, scores))
    for result in score_corpus(silent, windows, NAB_PROFILES).values():
        assert result.normalised == 0.0 and result.threshold == NO_DETECTION
    for result in score_corpus(perfect, windows, NAB_PROFILES).values():
        assert result.normalised == pytest.approx(100.0, abs=1e-9) and result.threshold == 1.0
        assert result.counts()["fp"] == 0


def test_corpus_sweep_agrees_with_direct_scoring_and_beats_fixed_thresholds(
    shared_data: Path,
) -> None:
    files, windows = _corpus(shared_data)
    layouts = layouts_for(files, windows)
    thresholds = read_thresholds(nab_root(shared_data) / "config" / "thresholds.json", "numenta")
    rng = np.random.default_rng(7)
    for name, cost in NAB_PROFILES.items():
        curve = threshold_curve([(layouts[f.relative_path], f.anomaly_scores) for f in files], cost)
        picks = [*rng.choice(curve.thresholds, size=6, replace=False).tolist(), thresholds[name]]
        for threshold in picks:
            direct = sum(
                score_file(layouts[f.relative_path], f.anomaly_scores, threshold, cost).score
                for f in files
            )
            assert curve.at(threshold) == pytest.approx(direct, rel=1e-11, abs=1e-9)
        fixed = score_corpus(files, windows, {name: cost}, {name: thresholds[name]})[name]
        optimised = score_corpus(files, windows, {name: cost})[name]
        assert optimised.optimised and not fixed.optimised
        assert optimised.raw == pytest.approx(curve.best()[1], abs=1e-9)
        assert optimised.raw >= fixed.raw - 1e-9


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_nab_score_command_prints_the_corpus_scores(shared_data: Path) -> None:
    root = nab_root(shared_data)
    args = [
        "nab-score",
        "--results", str(root / "results"),
        "--labels", str(root / "labels" / "combined_windows.json"),
        "--detector", "numenta",
        "--thresholds", str(root / "config" / "thresholds.json"),
        "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = _last_json(result.stdout)
    files, windows = _corpus(shared_data)
    thresholds = read_thresholds(root / "config" / "thresholds.json", "numenta")
    expected = score_corpus(files, windows, NAB_PROFILES, thresholds)
    assert payload["files"] == 42 and payload["threshold_source"] == "given"
    assert payload["scores"] == pytest.approx({k: v.normalised for k, v in expected.items()})
    assert payload["thresholds"] == thresholds


def test_nab_score_command_reports_bad_input_clearly(tmp_path: Path) -> None:
    labels = tmp_path / "windows.json"
    labels.write_text("{}")
    result = CliRunner().invoke(
        app,
        ["nab-score", "--results", str(tmp_path), "--labels", str(labels), "--detector", "nope"],
    )
    assert result.exit_code == 2
    assert "no results for detector 'nope'" in result.output


SMALL_FILES = ["realAdExchange/exchange-2_cpc_results.csv", "realTraffic/speed_7578.csv"]


def test_nab_command_runs_windowed_gaussian_like_nab_did(shared_data: Path, tmp_path: Path) -> None:
    """Our windowed Gaussian, run and scored by `vigil eval nab`, gives NAB's published files."""
    root = nab_root(shared_data)
    data = tmp_path / "data"
    for relative in SMALL_FILES:
        (data / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "data" / relative, data / relative)
    # NAB's thresholds.json names the detector windowedGaussian; ours is windowed-gaussian
    nab_thresholds = json.loads((root / "config" / "thresholds.json").read_text())
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({"windowed-gaussian": nab_thresholds["windowedGaussian"]}))
    args = [
        "nab",
        "--data", str(data),
        "--labels", str(root / "labels" / "combined_windows.json"),
        "--out", str(tmp_path / "results"),
        "--detector", "windowed-gaussian",
        "--thresholds", str(thresholds),
        "--workers", "2", "--no-progress", "--report", str(tmp_path / "report"), "--plots", "1",
        "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = _last_json(result.stdout)
    assert payload["files"] == len(SMALL_FILES) and payload["skipped"] == []
    assert (tmp_path / "report" / "nab_windowed-gaussian.md").is_file()
    assert list((tmp_path / "report").glob("*.png"))
    for relative in SMALL_FILES:
        category, name = relative.split("/")
        ours = read_result_series(
            tmp_path / "results" / "windowed-gaussian" / category / f"windowed-gaussian_{name}",
            relative,
        )
        published = read_result_series(
            root / "results" / "windowedGaussian" / category / f"windowedGaussian_{name}", relative
        )
        np.testing.assert_allclose(
            ours.anomaly_scores, published.anomaly_scores, rtol=0, atol=1.01e-12
        )
        assert ours.labels is not None and published.labels is not None
        assert np.array_equal(ours.labels, published.labels)
        for profile in NAB_PROFILES:
            table = read_published_scores(
                root / "results" / "windowedGaussian" / f"windowedGaussian_{profile}_scores.csv"
            )
            expected = sum(table[r].score for r in SMALL_FILES)
            raw = payload["profiles"][profile]["raw"]
            assert raw == pytest.approx(expected, abs=1e-5)


# ---- real files: repeated and out-of-order timestamps -------------------------------------
def _minute(k: int) -> str:
    return f"2020-01-01 00:{k:02d}:00"


# file order: row 5 (minute 4) comes after minute 5; rows 6 and 7 repeat minute 6
MESSY_MINUTES = [0, 1, 2, 3, 5, 4, 6, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
MESSY_SCORES = [0.0, 0.0, 0.0, 0.9, 0.0, 0.8, 0.0, 0.9, 0.0, 0.0,
                0.0, 0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.6, 0.0]  # fmt: skip
MESSY_WINDOWS = [[_minute(5), _minute(8)], [_minute(12), _minute(14)]]


def _messy_results(root: Path) -> Path:
    """A NAB results file with a repeated and an out-of-order timestamp, and its labels."""
    results = root / "results" / "mine" / "cat"
    results.mkdir(parents=True)
    lines = ["timestamp,value,anomaly_score"]
    rows = enumerate(zip(MESSY_MINUTES, MESSY_SCORES, strict=True))
    lines += [f"{_minute(m)},{i},{s}" for i, (m, s) in rows]
    (results / "mine_messy.csv").write_text("\n".join(lines) + "\n")
    labels = root / "windows.json"
    labels.write_text(json.dumps({"cat/messy.csv": MESSY_WINDOWS}))
    return labels


def test_repeated_and_out_of_order_timestamps_are_scored_by_nabs_rule(tmp_path: Path) -> None:
    """NAB's sweeper, by hand: rows in file order; a window opens at the first row whose
    timestamp equals its start and closes at the first later row equal to its end; its right
    index and width come from the first occurrence of each limit; only the earliest detection
    of a window pays; an FP after a window costs by distance from the row that closed it."""
    labels = _messy_results(tmp_path)
    cost = NAB_PROFILES["standard"]
    stamps = np.array([_minute(m) for m in MESSY_MINUTES], dtype="datetime64[us]")
    windows = read_windows(labels)["cat/messy.csv"]
    layout = layout_file(stamps, windows)
    # window 1: rows 4 (minute 5) .. 9 (minute 8), row 5 (minute 4) inside it as NAB has it;
    # right index 9, width 9 - 4 + 1 = 6. Window 2: rows 13 .. 15, right 15, width 3.
    assert [(s.first, s.last) for s in layout.spans] == [(4, 9), (13, 15)]
    assert layout.probation == 3
    max_tp = scaled_sigmoid(-1.0)
    expected_tp = scaled_sigmoid(-(9 - 5 + 1) / 6.0) * cost.tp_weight / max_tp  # row 5, not row 7
    expected_fp = [
        -1.0 * cost.fp_weight,  # row 3: before any window, full cost
        scaled_sigmoid(abs(9 - 11) / (6.0 - 1)) * cost.fp_weight,  # row 11, after window 1
        scaled_sigmoid(abs(15 - 18) / (3.0 - 1)) * cost.fp_weight,  # row 18, after window 2
    ]
    expected_fn = [-cost.fn_weight]  # window 2 never detected
    expected = expected_tp + sum(expected_fp) + sum(expected_fn)
    scored = score_file(layout, MESSY_SCORES, 0.5, cost)
    assert scored.score == pytest.approx(expected, abs=1e-12)
    assert (scored.tp, scored.fp) == (2, 3)  # rows 5 and 7 are both in window 1
    assert scored.row_scores[4] == pytest.approx(expected_tp)
    assert scored.row_scores[13] == -cost.fn_weight
    # the threshold sweep agrees with direct scoring at every candidate
    curve = threshold_curve([(layout, MESSY_SCORES)], cost)
    for threshold in (0.5, 0.65, 0.75, 0.85, 0.9):
        direct = score_file(layout, MESSY_SCORES, threshold, cost).score
        assert curve.at(threshold) == pytest.approx(direct, abs=1e-12)

    # end to end: `vigil eval nab-score` on the file, at a given threshold
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({"mine": {p: {"threshold": 0.5} for p in NAB_PROFILES}}))
    result = CliRunner().invoke(app, [
        "nab-score", "--results", str(tmp_path / "results"), "--labels", str(labels),
        "--detector", "mine", "--thresholds", str(thresholds), "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    standard = _last_json(result.stdout)["profiles"]["standard"]
    assert standard["raw"] == pytest.approx(expected, abs=1e-6)
    assert (standard["tp"], standard["fp"]) == (2, 3)
    # null: both windows missed; perfect: both hit at their first row
    assert standard["score"] == pytest.approx(100 * (expected + 2) / 4, abs=1e-4)


def test_a_window_limit_missing_from_a_messy_file_is_a_clear_error() -> None:
    stamps = np.array([_minute(m) for m in [0, 2, 1, 3]], dtype="datetime64[us]")
    window = [(np.datetime64(_minute(1), "us"), np.datetime64("2020-01-01 00:02:30", "us"))]
    with pytest.raises(ValueError, match="no row's timestamp"):
        layout_file(stamps, window)


def test_cross_validation_chooses_on_other_folds_only(shared_data: Path) -> None:
    """Held-out: each fold is scored at the threshold (and with the detector) chosen on the
    other folds; a detector that is perfect on the held-out fold cannot be chosen for it."""
    from vigil.bench.nab.crossval import cross_validate, folds_of

    files, windows = _corpus(shared_data)
    files = files[:9]
    cost = NAB_PROFILES["standard"]
    fold = folds_of([f.relative_path for f in files], 3)
    assert sorted(fold.values()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    alone = cross_validate({"numenta": files}, windows, cost, 3)
    raw = null = perfect = 0.0
    for k in range(3):
        train = [f for f in files if fold[f.relative_path] != k]
        test = [f for f in files if fold[f.relative_path] == k]
        threshold = score_corpus(train, windows, {"s": cost})["s"].threshold
        result = score_corpus(test, windows, {"s": cost}, {"s": threshold})["s"]
        raw, null, perfect = raw + result.raw, null + result.null, perfect + result.perfect
        assert alone.choices[k] == ("numenta", threshold)
    assert alone.score == pytest.approx(100 * (raw - null) / (perfect - null))
    # an oracle that fires at the start of fold 0's windows only: chosen for folds 1 and 2
    # (it is perfect on fold 0, which they train on) but never for fold 0 itself
    layouts = layouts_for(files, windows)
    oracle = []
    for f in files:
        scores = np.zeros(len(f.anomaly_scores))
        if fold[f.relative_path] == 0:
            for span in layouts[f.relative_path].spans:
                scores[span.first] = 1.0
        oracle.append(ScoredFile(f.relative_path, f.timestamps, scores))
    chosen = cross_validate({"numenta": files, "oracle": oracle}, windows, cost, 3)
    assert chosen.choices[0][0] == "numenta"
