"""A labelled multivariate dataset of sustained sensor faults, generated with GutenTAG.

`GutenTAG <https://github.com/TimeEval/GutenTAG>`_ (``timeeval-gutentag``, the ``eval`` extra)
builds each series from base oscillations and injects labelled anomalies. Every series here:

* ``channels`` channels (4 by default) of stationary oscillations with noise: a sine, a cosine,
  a square wave and a sawtooth, each with its own seeded frequency, amplitude and offset;
* a **known-normal start**: no anomaly in the first ``normal_rows`` rows (the reference period);
* after it, ``anomalies`` sustained faults at seeded positions, each on one or two channels
  (two channels at once: a collective, multivariate fault), cycling through the kinds
  ``mean`` (level shift), ``variance`` (more noise), ``amplitude``, ``frequency``, ``pattern``
  (the oscillation's shape), ``platform`` (a stuck value) and ``extremum`` (one-row spike), and a
  ``trend`` as the last fault of odd seeds. GutenTAG's trend leaves the level where the trend
  ended (it adds the trend's last value to the rest of the series), so the key never returns to
  normal: the generator labels the rest of that series anomalous too.

Files: ``<out>/gutentag_<seed>.csv`` with ``timestamp`` (epoch seconds, one per second from
2026-01-01), ``value-0`` … ``value-<channels-1>`` and ``is_anomaly`` (0/1 per row). The data is
generated, never committed: ``python -m vigil.bench.gutentag_data --out DIR`` (seeds 0-7 by
default) writes the set ``vigil eval anomalies`` is documented with.
"""

from __future__ import annotations

import argparse
import logging
import random
from collections.abc import Sequence
from contextlib import redirect_stderr
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["KINDS", "SeriesSpec", "generate_series", "series_spec", "write_dataset"]

START_TS = 1_767_225_600  # 2026-01-01T00:00:00Z
KINDS = ("mean", "variance", "amplitude", "frequency", "pattern", "platform", "extremum")
SHAPES = ("sine", "cosine", "square", "sawtooth")


@dataclass(frozen=True)
class SeriesSpec:
    """One series: its GutenTAG config (a dict as GutenTAG's YAML would hold) and its length."""

    seed: int
    length: int
    normal_rows: int
    config: dict[str, Any]
    trend_at: int | None  # first row of a trend anomaly (labelled to the end), if any


def _oscillation(shape: str, rng: random.Random, channel: int) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": shape,
        "frequency": round(rng.uniform(0.5, 2.5), 3),  # cycles per 100 rows
        "amplitude": round(rng.uniform(0.5, 2.0), 3),
        "variance": round(rng.uniform(0.02, 0.08), 3),
        "offset": round(rng.uniform(-5.0, 5.0), 2),
    }
    if shape == "square":
        base["duty"] = 0.5
    if shape == "sawtooth":
        base["width"] = 0.5
    return base


def _kind(kind: str, rng: random.Random) -> dict[str, Any]:
    sign = rng.choice((-1.0, 1.0))
    if kind == "mean":
        return {"kind": "mean", "offset": round(sign * rng.uniform(0.3, 0.8), 3)}
    if kind == "variance":
        return {"kind": "variance", "variance": round(rng.uniform(0.2, 0.5), 3)}
    if kind == "amplitude":
        return {"kind": "amplitude", "amplitude_factor": rng.choice((0.3, 2.0))}
    if kind == "frequency":
        return {"kind": "frequency", "frequency_factor": rng.choice((0.5, 2.0))}
    if kind == "pattern":
        return {"kind": "pattern", "sinusoid_k": 5.0, "cbf_pattern_factor": 2.0}
    if kind == "platform":
        return {"kind": "platform", "value": round(rng.uniform(-0.5, 0.5), 3)}
    return {"kind": "extremum", "min": sign < 0, "local": False}


def series_spec(
    seed: int,
    *,
    length: int = 4000,
    channels: int = 4,
    normal_rows: int = 1000,
    anomalies: int = 6,
) -> SeriesSpec:
    """The GutenTAG config of series ``seed`` (deterministic: the same seed, the same series)."""
    if channels < 1 or anomalies < 1 or normal_rows < 1:
        raise ValueError("channels, anomalies and normal_rows must be at least 1")
    rng = random.Random(seed)
    shapes = [SHAPES[(seed + c) % len(SHAPES)] for c in range(channels)]
    trend = seed % 2 == 1
    slots = anomalies + (1 if trend else 0)
    span = (length - normal_rows) // slots
    if span < 120:
        raise ValueError(f"{length} rows leave too little room for {slots} anomalies")
    entries: list[dict[str, Any]] = []
    for k in range(anomalies):
        kind = KINDS[(seed + k) % len(KINDS)]
        size = 1 if kind == "extremum" else rng.randint(span // 6, span // 3)
        start = normal_rows + k * span + rng.randint(20, span - size - 20)
        hit = rng.sample(range(channels), 2 if channels > 1 and rng.random() < 0.4 else 1)
        for channel in hit:
            entries.append(
                {
                    "exact-position": start,
                    "length": size,
                    "channel": channel,
                    "kinds": [_kind(kind, rng)],
                }
            )
    trend_at = None
    if trend:
        trend_at = normal_rows + anomalies * span + rng.randint(20, span // 2)
        size = min(span // 2, length - trend_at - 1)
        size -= size % 5  # GutenTAG's trend splits its length 20/80 and needs both whole
        entries.append(
            {
                "exact-position": trend_at,
                "length": size,
                "channel": rng.randrange(channels),
                "kinds": [
                    {
                        "kind": "trend",
                        # a ramp of 1 to 3 units over the fault (GutenTAG's x is the row)
                        "oscillation": {
                            "kind": "polynomial",
                            "polynomial": [0.0, round(rng.uniform(1.0, 3.0) / size, 6)],
                        },
                    }
                ],
            }
        )
    config = {
        "timeseries": [
            {
                "name": f"gutentag_{seed}",
                "length": length,
                "base-oscillations": [
                    _oscillation(shape, rng, c) for c, shape in enumerate(shapes)
                ],
                "anomalies": entries,
            }
        ]
    }
    return SeriesSpec(seed, length, normal_rows, config, trend_at)


def generate_series(spec: SeriesSpec) -> pd.DataFrame:
    """Run GutenTAG on ``spec``: ``timestamp``, ``value-0`` …, ``is_anomaly`` (one row each)."""
    from gutenTAG import GutenTAG

    quiet = logging.getLogger("gutenTAG")
    before = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with redirect_stderr(StringIO()):  # its progress bars
            generator = GutenTAG(seed=spec.seed)
            generator.load_config_dict(spec.config)
            generated = generator.generate(return_timeseries=True)
    finally:
        quiet.setLevel(before)
    if not generated:
        raise ValueError(f"GutenTAG generated nothing for seed {spec.seed}")
    frame = generated[0].timeseries.reset_index(drop=True)
    labels = frame["is_anomaly"].to_numpy(dtype=np.int64).copy()
    if spec.trend_at is not None:
        labels[spec.trend_at :] = 1  # the level never comes back (module doc)
    values = frame.drop(columns=["is_anomaly"])
    out = pd.DataFrame({"timestamp": START_TS + np.arange(len(frame), dtype=np.int64)})
    for column in values.columns:
        out[str(column)] = values[column].to_numpy(dtype=np.float64)
    out["is_anomaly"] = labels
    if labels[: spec.normal_rows].any():
        raise ValueError(f"seed {spec.seed}: an anomaly reached the normal start")
    return out


def write_dataset(
    out: Path,
    seeds: Sequence[int] = tuple(range(8)),
    *,
    length: int = 4000,
    channels: int = 4,
    normal_rows: int = 1000,
    anomalies: int = 6,
) -> list[Path]:
    """Generate one CSV per seed under ``out``; returns the paths, in seed order."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        spec = series_spec(
            seed, length=length, channels=channels, normal_rows=normal_rows, anomalies=anomalies
        )
        path = out / f"gutentag_{seed}.csv"
        generate_series(spec).to_csv(path, index=False, float_format="%.6f")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write CSVs to")
    parser.add_argument("--seeds", default="0-7", help="e.g. 0-7 or 1,3,5")
    parser.add_argument("--length", type=int, default=4000)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--normal-rows", type=int, default=1000)
    parser.add_argument("--anomalies", type=int, default=6)
    args = parser.parse_args(argv)
    seeds = _seeds(args.seeds)
    for path in write_dataset(
        args.out,
        seeds,
        length=args.length,
        channels=args.channels,
        normal_rows=args.normal_rows,
        anomalies=args.anomalies,
    ):
        frame = pd.read_csv(path)
        print(f"{path}: {len(frame)} rows, {int(frame['is_anomaly'].sum())} anomalous")


def _seeds(text: str) -> list[int]:
    if "-" in text and "," not in text:
        low, high = text.split("-", 1)
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in text.split(",") if s.strip()]


if __name__ == "__main__":
    main()
