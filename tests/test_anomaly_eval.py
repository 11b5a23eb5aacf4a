"""`vigil eval anomalies`: figures checked by hand on a small file, bad input, the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vigil.bench.anomaly_eval import Counts, best_threshold, read_labelled, run_detector
from vigil.bench.eval_cli import app
from vigil.bench.gutentag_data import generate_series, series_spec

WARMUP = 4


def hand_made(path: Path) -> Path:
    """20 rows; the warm-up (rows 0-3) has mean 0.5 and standard deviation 0.5 on channel a.

    Scored rows 4-19: labelled 10-13. |z| of a = |a - 0.5| / 0.5: rows 10 and 11 are 6 (caught),
    12 and 13 are 0 (missed), row 15 is 3 (a false alarm at the z-score's flag, 3), others 0.
    Channel b is constant 7, so its |z| is 0 everywhere (its zero spread counts as 1).
    """
    a = [0.0, 1.0, 0.0, 1.0] + [0.5] * 16
    a[10] = a[11] = 3.5
    a[15] = 2.0
    labels = [1 if 10 <= i <= 13 else 0 for i in range(20)]
    lines = ["time;a;b;label"]
    lines += [f"2026-01-01T00:00:{i:02d}Z;{a[i]};7;{labels[i]}" for i in range(20)]
    path.write_text("\n".join(lines) + "\n")
    return path


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["anomalies", *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_figures_match_a_hand_count(tmp_path: Path) -> None:
    path = hand_made(tmp_path / "hand.csv")
    code, out, _ = invoke(
        str(path), "--detectors", "zscore", "--warmup-rows", str(WARMUP), "--delimiter", ";",
        "--timestamp-column", "time", "--label-column", "label", "--channels", "a,b",
        "--folds", "0", "--no-progress", "--json",
    )  # fmt: skip
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["rows_scored"] == 16 and result["anomalous_rows"] == 4
    flag = result["detectors"]["zscore"]["flag"]
    # own flag (|z| >= 3): TP rows 10, 11; FP row 15; FN rows 12, 13; TN the other 11
    assert (flag["tp"], flag["fp"], flag["fn"], flag["tn"]) == (2, 1, 2, 11)
    assert flag["precision"] == pytest.approx(2 / 3)
    assert flag["recall"] == pytest.approx(0.5)
    assert flag["f1"] == pytest.approx(4 / 7)  # 2PR / (P + R) = (2/3) / (7/6)
    assert flag["far"] == pytest.approx(1 / 12)
    assert flag["mar"] == pytest.approx(0.5)
    # NAB: the window (rows 10-13) is caught on its first row: +1; the false alarm, 2 rows past
    # the window's end (position 2 / 3): 0.11 * (2 / (1 + e^(10/3)) - 1) = -0.10242...
    fp_cost = 0.11 * (2 / (1 + np.exp(5 * 2 / 3)) - 1)
    assert flag["nab"] == pytest.approx(100 * (1 + fp_cost + 1) / 2)
    # best threshold: |z| >= 6 keeps the two hits and drops the false alarm: P 1, R 0.5
    best = result["detectors"]["zscore"]["best"]
    assert best["threshold"] == pytest.approx(6.0)
    assert (best["tp"], best["fp"], best["fn"]) == (2, 0, 2)
    assert best["f1"] == pytest.approx(2 / 3)
    assert best["far"] == 0.0


def test_human_lines_then_json(tmp_path: Path) -> None:
    path = hand_made(tmp_path / "hand.csv")
    code, out, _ = invoke(
        str(tmp_path), "--detectors", "zscore,loda", "--warmup-rows", str(WARMUP),
        "--delimiter", ";", "--timestamp-column", "time", "--label-column", "label",
        "--column", "a", "--folds", "0", "--no-progress",
    )  # fmt: skip
    assert code == 0, out
    lines = out.strip().splitlines()
    assert any(line.split()[:2] == ["zscore", "flag"] for line in lines)
    assert json.loads(lines[-1])["files"] == [str(path)]
    assert json.loads(lines[-1])["channels"] == ["a"]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--label-column", "nope"], "no column 'nope'"),
        (["--warmup-rows", "20"], "none left after 20 warm-up"),
        (["--detectors", "magic"], "unknown detector"),
        (["--column", "a", "--channels", "a,b"], "not both"),
    ],
)
def test_bad_input_is_an_error_with_exit_code_2(
    tmp_path: Path, args: list[str], reason: str
) -> None:
    path = hand_made(tmp_path / "hand.csv")
    base = ["--delimiter", ";", "--timestamp-column", "time", "--no-progress"]
    extra = [] if "--label-column" in args else ["--label-column", "label"]
    code, _, err = invoke(str(path), *base, *extra, "--warmup-rows", str(WARMUP), *args)
    assert code == 2
    assert "error:" in err and reason in err


def test_labels_must_be_zero_or_one_and_files_must_exist(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,x,is_anomaly\n0,1,0\n1,2,2\n")
    code, _, err = invoke(str(bad), "--warmup-rows", "1", "--no-progress")
    assert code == 2 and "must hold 0 or 1" in err
    code, _, err = invoke(str(tmp_path / "missing.csv"), "--no-progress")
    assert code == 2 and "no such file" in err


def test_best_threshold_maximises_pooled_f1() -> None:
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.95])
    labels = np.array([False, False, True, True, False, False])
    threshold = best_threshold([(scores, labels)])
    assert threshold == pytest.approx(0.8)  # flags 0.8, 0.9 and 0.95: P 2/3, R 1 -> F1 0.8
    counts = Counts.of(scores >= threshold, labels)
    assert counts.metrics()["f1"] == pytest.approx(0.8)


def test_the_gutentag_dataset_is_seeded_and_starts_normal(tmp_path: Path) -> None:
    spec = series_spec(3, length=1200, channels=3, normal_rows=400, anomalies=3)
    first, second = generate_series(spec), generate_series(spec)
    assert first.equals(second)
    assert list(first.columns) == ["timestamp", "value-0", "value-1", "value-2", "is_anomaly"]
    assert not first["is_anomaly"][:400].any() and first["is_anomaly"][400:].any()
    assert first["is_anomaly"].iloc[-1] == 1  # seed 3 ends with a trend: labelled to the end
    path = tmp_path / "g.csv"
    first.to_csv(path, index=False)
    series = read_labelled(path)
    assert series.values.shape == (1200, 3) and series.labels.sum() == first["is_anomaly"].sum()
    run = run_detector("zscore", series, 400)
    assert run.scores.shape == (1200,)
