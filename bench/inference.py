"""Inference throughput of the default forecaster, every figure measured in the same run.

What it shows, against the targets of the batching issue:

* batched window mode (one forward pass for 256 windows) vs a loop that runs one window per call
  — the batched rate should be at least 20x the loop;
* the model's achieved FLOP rate in batched mode (LSTM FLOPs counted analytically) as a fraction
  of this machine's float32 GEMM rate (``torch.matmul`` on large matrices) — target ≥ 50%;
  batch size and thread count are swept, and the best configuration is reported with the rest;
* stateful mode's cost per event at window 32 and 256 — it must not depend on the window
  (target within 1.3x), while window mode's cost grows with it (shown for contrast).

Every rate is the best of a few repeats (the machine may be shared; the best run is the one
least disturbed). Nothing is asserted: the figures are printed, and whether each target is met.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from models.forecaster import build_forecaster
from models.inference import InferenceEngine
from vigil.settings import ModelConfig

BATCHED_TARGET = 20.0  # batched windows/s ÷ per-window-loop windows/s
GEMM_FRACTION_TARGET = 0.5  # model FLOP rate ÷ GEMM FLOP rate
STATEFUL_WINDOW_TARGET = 1.3  # per-event cost at window 256 ÷ at window 32


@dataclass
class SweepPoint:
    threads: int
    batch: int
    windows_per_s: float
    gflops: float
    gemm_gflops: float

    @property
    def gemm_fraction(self) -> float:
        return self.gflops / self.gemm_gflops if self.gemm_gflops else 0.0


@dataclass
class InferenceBenchResult:
    model: dict[str, Any]
    threads: int
    load_average: float
    batch: int
    gemm_gflops: float
    batched_windows_per_s: float
    loop_windows_per_s: float  # the faster of the two per-window loops
    engine_loop_windows_per_s: float
    torch_loop_windows_per_s: float
    batched_gflops: float
    flops_per_window: int
    sweep: list[SweepPoint] = field(default_factory=list)
    stateful_events_per_s: dict[int, float] = field(default_factory=dict)
    stateful_step_only_events_per_s: dict[int, float] = field(default_factory=dict)
    window_mode_us_per_window: dict[int, float] = field(default_factory=dict)

    @property
    def batched_speedup(self) -> float:
        return self.batched_windows_per_s / self.loop_windows_per_s

    @property
    def gemm_fraction(self) -> float:
        return self.batched_gflops / self.gemm_gflops

    @property
    def best_sweep(self) -> SweepPoint:
        return max(self.sweep, key=lambda point: point.gemm_fraction)

    @property
    def stateful_cost_ratio(self) -> float:
        """Per-event cost at the longest window ÷ at the shortest (1.0 = independent)."""
        windows = sorted(self.stateful_events_per_s)
        rates = self.stateful_events_per_s
        return rates[windows[0]] / rates[windows[-1]]

    @property
    def window_cost_ratio(self) -> float:
        windows = sorted(self.window_mode_us_per_window)
        costs = self.window_mode_us_per_window
        return costs[windows[-1]] / costs[windows[0]]

    def targets(self) -> dict[str, dict[str, float | bool]]:
        best = self.best_sweep
        return {
            "batched_vs_loop": {
                "value": self.batched_speedup,
                "target": BATCHED_TARGET,
                "met": self.batched_speedup >= BATCHED_TARGET,
            },
            "gemm_fraction_batch": {
                "value": self.gemm_fraction,
                "target": GEMM_FRACTION_TARGET,
                "met": self.gemm_fraction >= GEMM_FRACTION_TARGET,
            },
            "gemm_fraction_best_sweep": {
                "value": best.gemm_fraction,
                "target": GEMM_FRACTION_TARGET,
                "met": best.gemm_fraction >= GEMM_FRACTION_TARGET,
            },
            "stateful_cost_256_vs_32": {
                "value": self.stateful_cost_ratio,
                "target": STATEFUL_WINDOW_TARGET,
                "met": self.stateful_cost_ratio <= STATEFUL_WINDOW_TARGET,
            },
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["sweep"] = [asdict(p) | {"gemm_fraction": p.gemm_fraction} for p in self.sweep]
        data["batched_speedup"] = self.batched_speedup
        data["gemm_fraction"] = self.gemm_fraction
        data["stateful_cost_ratio"] = self.stateful_cost_ratio
        data["window_cost_ratio"] = self.window_cost_ratio
        data["targets"] = self.targets()
        return data


def best_rate(run: Callable[[], object], items: float, seconds: float, repeats: int = 3) -> float:
    """Items per second of ``run``: best of ``repeats`` timings of at least ``seconds`` each."""
    run()  # warm-up: allocator, oneDNN primitive cache
    best = 0.0
    for _ in range(repeats):
        calls = 0
        start = time.perf_counter()
        while True:
            run()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        best = max(best, calls * items / elapsed)
    return best


def gemm_gflops(seconds: float, sizes: tuple[int, ...] = (1024, 2048)) -> float:
    """This machine's float32 matmul rate (best over a few large square sizes)."""
    rates = []
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        rates.append(best_rate(partial(torch.matmul, a, b), 2.0 * n**3, seconds) / 1e9)
    return max(rates)


def _windows(batch: int, window: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, window, channels)).astype(np.float32)


def run_inference_bench(
    *, batch: int = 256, seconds: float = 0.4, progress: Callable[[str], None] | None = None
) -> InferenceBenchResult:
    """Measure every figure; ``seconds`` is the length of one timing repeat."""
    say = progress or (lambda _message: None)
    threads = torch.get_num_threads()
    config = ModelConfig.model_validate(
        {}
    )  # lstm, hidden 64, 2 layers, window 64, input 1, horizon 1
    engine = InferenceEngine(build_forecaster(config, seed=0), torch.device("cpu"))
    flops = engine.model.flops_per_window()

    say("GEMM rate")
    gemm = gemm_gflops(seconds)

    say(f"batched window mode, batch {batch}")
    windows = _windows(batch, config.window, config.input_size)
    batched = best_rate(lambda: engine.predict(windows), batch, seconds)

    say("one window per call")
    some = windows[:64]
    engine_loop = best_rate(lambda: [engine.predict(w[None]) for w in some], len(some), seconds)
    model = engine.model

    def torch_loop() -> None:  # the tutorial way: no_grad, one tensor per window
        with torch.no_grad():
            for w in some:
                model(torch.tensor(w).unsqueeze(0)).numpy()

    plain_loop = best_rate(torch_loop, len(some), seconds)

    result = InferenceBenchResult(
        model=config.model_dump(),
        threads=threads,
        load_average=os.getloadavg()[0],
        batch=batch,
        gemm_gflops=gemm,
        batched_windows_per_s=batched,
        loop_windows_per_s=max(engine_loop, plain_loop),
        engine_loop_windows_per_s=engine_loop,
        torch_loop_windows_per_s=plain_loop,
        batched_gflops=batched * flops / 1e9,
        flops_per_window=flops,
    )

    say("sweep: threads x batch size")
    try:
        for n_threads in sorted({1, threads}):
            torch.set_num_threads(n_threads)
            gemm_here = gemm if n_threads == threads else gemm_gflops(seconds)
            for size in (64, 128, 256, 512):
                sample = _windows(size, config.window, config.input_size)
                rate = best_rate(partial(engine.predict, sample), size, seconds, repeats=2)
                result.sweep.append(
                    SweepPoint(n_threads, size, rate, rate * flops / 1e9, gemm_here)
                )
    finally:
        torch.set_num_threads(threads)

    for window in (32, 256):
        say(f"stateful and window mode at window {window}")
        measure_window(result, config.model_copy(update={"window": window}), seconds)
    return result


def measure_window(result: InferenceBenchResult, config: ModelConfig, seconds: float) -> None:
    """Stateful events/s (with and without per-key bytes) and window-mode cost at one window."""
    batch, window = result.batch, config.window
    engine = InferenceEngine(build_forecaster(config, seed=0), torch.device("cpu"))
    x = _windows(batch, 1, config.input_size)[:, 0]
    stored = engine.states_to_bytes(engine.initial_state(batch))

    def stateful_event() -> None:
        # the stream's per-event path: per-key bytes -> batch -> one step -> per-key bytes
        state = engine.states_from_bytes(stored)
        _, state = engine.step(x, state)
        engine.states_to_bytes(state)

    state = engine.initial_state(batch)
    result.stateful_events_per_s[window] = best_rate(stateful_event, batch, seconds)
    result.stateful_step_only_events_per_s[window] = best_rate(
        lambda: engine.step(x, state), batch, seconds
    )
    windows = _windows(batch, window, config.input_size)
    rate = best_rate(lambda: engine.predict(windows), batch, seconds, repeats=2)
    result.window_mode_us_per_window[window] = 1e6 / rate


def print_report(result: InferenceBenchResult) -> None:
    """Readable tables of the measured figures and the targets."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cfg = result.model
    title = (
        f"{cfg['cell']} hidden {cfg['hidden_size']} x {cfg['num_layers']} layers, "
        f"window {cfg['window']}; CPU, {result.threads} threads, "
        f"load average {result.load_average:.2f}"
    )
    rates = Table(title=f"Forecaster inference — {title}")
    rates.add_column("measure")
    rates.add_column("value", justify="right")
    rates.add_row(
        f"batched window mode (batch {result.batch})",
        f"{result.batched_windows_per_s:,.0f} windows/s",
    )
    rates.add_row(
        "loop, one window per call (engine)", f"{result.engine_loop_windows_per_s:,.0f} windows/s"
    )
    rates.add_row(
        "loop, one window per call (plain torch)",
        f"{result.torch_loop_windows_per_s:,.0f} windows/s",
    )
    rates.add_row("float32 GEMM (torch.matmul)", f"{result.gemm_gflops:,.1f} GFLOP/s")
    rates.add_row(
        f"model, batched ({result.flops_per_window / 1e6:.2f} MFLOP/window)",
        f"{result.batched_gflops:,.1f} GFLOP/s ({result.gemm_fraction:.0%} of GEMM)",
    )
    for window, rate in sorted(result.stateful_events_per_s.items()):
        step_only = result.stateful_step_only_events_per_s[window]
        rates.add_row(
            f"stateful mode, window {window} (bytes in/out | step only)",
            f"{rate:,.0f} | {step_only:,.0f} events/s ({1e6 / rate:.1f} µs/event)",
        )
    for window, cost in sorted(result.window_mode_us_per_window.items()):
        rates.add_row(f"window mode, window {window}", f"{cost:.1f} µs/window")
    console.print(rates)

    sweep = Table(title="Sweep: threads x batch size (window mode)")
    for column in ("threads", "batch", "windows/s", "GFLOP/s", "GEMM GFLOP/s", "of GEMM"):
        sweep.add_column(column, justify="right")
    for p in result.sweep:
        sweep.add_row(
            str(p.threads),
            str(p.batch),
            f"{p.windows_per_s:,.0f}",
            f"{p.gflops:.1f}",
            f"{p.gemm_gflops:.1f}",
            f"{p.gemm_fraction:.0%}",
        )
    console.print(sweep)

    targets = Table(title="Targets")
    for column in ("target", "measured", "goal", "met"):
        targets.add_column(column)
    labels = {
        "batched_vs_loop": ("batched ÷ per-window loop", "{:.1f}x", "≥ {:.0f}x"),
        "gemm_fraction_batch": (f"model ÷ GEMM at batch {result.batch}", "{:.0%}", "≥ {:.0%}"),
        "gemm_fraction_best_sweep": ("model ÷ GEMM, best of sweep", "{:.0%}", "≥ {:.0%}"),
        "stateful_cost_256_vs_32": ("stateful µs/event, window 256 ÷ 32", "{:.2f}x", "≤ {:.1f}x"),
    }
    for key, outcome in result.targets().items():
        label, shown, goal = labels[key]
        targets.add_row(
            label,
            shown.format(outcome["value"]),
            goal.format(outcome["target"]),
            "yes" if outcome["met"] else "NO",
        )
    targets.add_row(
        "window mode µs/window, 256 ÷ 32 (contrast)", f"{result.window_cost_ratio:.1f}x", "", ""
    )
    console.print(targets)
