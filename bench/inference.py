"""Inference throughput of the default forecaster, every figure measured in the same run.

What it shows, against the targets of the batching issue:

* batched window mode (one forward pass for 256 windows) vs a loop that runs one window per call
  — the batched rate should be at least 20x the loop;
* the model's achieved FLOP rate in batched mode (LSTM FLOPs counted analytically) as a fraction
  of this machine's float32 GEMM rate (``torch.matmul`` on large matrices) — target ≥ 50%;
  batch size and thread count are swept, and the best configuration is reported with the rest;
* stateful mode's cost per event at window 32 and 256 — it must not depend on the window
  (target within 1.3x), while window mode's cost grows with it (shown for contrast).

Every rate comes from the fastest of many calls, with the cases timed round-robin (the machine
may be shared). Nothing is asserted: the figures are printed, and whether each target is met.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from vigil.models.batching import BatchScheduler
from vigil.models.device import DevicePreference, select_device
from vigil.models.forecaster import build_forecaster
from vigil.models.inference import InferenceEngine
from vigil.settings import BatchConfig, ModelConfig

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
    device: str
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
    scheduler_windows_per_s: float = 0.0
    scheduler_mean_batch: float = 0.0
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
    def stateful_vs_loop(self) -> float:
        """Stateful events/s (per-key bytes in and out) ÷ per-window-loop windows/s."""
        return min(self.stateful_events_per_s.values()) / self.loop_windows_per_s

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
        data["stateful_vs_loop"] = self.stateful_vs_loop
        data["targets"] = self.targets()
        return data


Case = tuple[Callable[[], object], float]
"""A thing to time and how many items (windows, events, FLOPs) one call processes."""


def best_rates(cases: dict[str, Case], seconds: float, repeats: int = 3) -> dict[str, float]:
    """Items per second of every case from its FASTEST call, the cases timed INTERLEAVED.

    The machine may be shared: the fastest call (timeit's rule) is the one least disturbed,
    and round-robin timing makes a burst of outside load hit every case of a round alike, so
    the ratios between cases stay meaningful.
    """
    for run, _items in cases.values():
        run()  # warm-up: allocator, oneDNN primitive cache
    fastest = dict.fromkeys(cases, math.inf)
    for _ in range(repeats):
        for name, (run, _items) in cases.items():
            spent = 0.0
            while spent < seconds:
                start = time.perf_counter()
                run()
                elapsed = time.perf_counter() - start
                spent += elapsed
                fastest[name] = min(fastest[name], elapsed)
    return {name: items / fastest[name] for name, (_run, items) in cases.items()}


def gemm_cases(
    sizes: tuple[int, ...] = (1024, 2048), device: torch.device | None = None
) -> dict[str, Case]:
    """float32 matmul of large square matrices: the device's attainable FLOP rate."""
    device = device or torch.device("cpu")
    if device.type == "cuda":
        sizes = (*sizes, 4096)  # a GPU needs larger products to reach its peak
    cases: dict[str, Case] = {}
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        cases[f"gemm{n}"] = (partial(_synchronised_matmul, a, b), 2.0 * n**3)
    return cases


def _synchronised_matmul(a: torch.Tensor, b: torch.Tensor) -> None:
    """CUDA kernels are queued, not run: time the product, not its launch."""
    torch.matmul(a, b)
    if a.is_cuda:
        torch.cuda.synchronize(a.device)


def _gemm_gflops(rates: dict[str, float]) -> float:
    return max(rate for name, rate in rates.items() if name.startswith("gemm")) / 1e9


def _windows(batch: int, window: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, window, channels)).astype(np.float32)


def run_inference_bench(
    *,
    batch: int = 256,
    seconds: float = 0.4,
    threads: int | None = 1,
    device: DevicePreference = "cpu",
    progress: Callable[[str], None] | None = None,
) -> InferenceBenchResult:
    """Measure every figure; ``seconds`` is one timing repeat.

    ``threads`` is torch's intra-op thread count for the headline figures (None = torch's
    default). It defaults to 1 because that is how the worker runs inference: one dedicated
    thread beside the event loop. The sweep also tries torch's default. ``device`` is
    ``VIGIL_DEVICE``'s choice (``cuda`` without a GPU is an error, as in the worker); on CUDA
    the GEMM reference is the GPU's and the thread sweep only varies the batch.
    """
    say = progress or (lambda _message: None)
    target = select_device(device)
    initial_threads = torch.get_num_threads()
    threads = threads or initial_threads
    torch.set_num_threads(threads)
    sweep = sorted({1, threads, initial_threads}) if target.type == "cpu" else [threads]
    try:
        return _measure(batch, seconds, threads, sweep, say, target)
    finally:
        torch.set_num_threads(initial_threads)


def _measure(
    batch: int,
    seconds: float,
    threads: int,
    sweep: list[int],
    say: Callable[[str], None],
    device: torch.device,
) -> InferenceBenchResult:
    # the default model: lstm, hidden 64, 2 layers, window 64, input 1, horizon 1
    config = ModelConfig.model_validate({})
    engine = InferenceEngine(build_forecaster(config, seed=0), device)
    model = engine.model
    flops = model.flops_per_window()
    windows = _windows(batch, config.window, config.input_size)
    some = windows[:64]

    def engine_loop() -> None:  # the same engine, one window per call
        for w in some:
            engine.predict(w[None])

    def torch_loop() -> None:  # the tutorial way: no_grad, one tensor per window
        with torch.no_grad():
            for w in some:
                model(torch.tensor(w, device=device).unsqueeze(0)).cpu().numpy()

    say(f"GEMM, batched (batch {batch}) and one-window-per-call loops, interleaved ({device})")
    rates = best_rates(
        gemm_cases(device=device)
        | {
            "batched": (partial(engine.predict, windows), batch),
            "engine_loop": (engine_loop, len(some)),
            "torch_loop": (torch_loop, len(some)),
        },
        seconds,
    )
    result = InferenceBenchResult(
        model=config.model_dump(),
        device=str(device),
        threads=threads,
        load_average=os.getloadavg()[0],
        batch=batch,
        gemm_gflops=_gemm_gflops(rates),
        batched_windows_per_s=rates["batched"],
        loop_windows_per_s=max(rates["engine_loop"], rates["torch_loop"]),
        engine_loop_windows_per_s=rates["engine_loop"],
        torch_loop_windows_per_s=rates["torch_loop"],
        batched_gflops=rates["batched"] * flops / 1e9,
        flops_per_window=flops,
    )

    say(f"through the BatchScheduler, {batch} keys submitting concurrently")
    result.scheduler_windows_per_s, result.scheduler_mean_batch = asyncio.run(
        scheduler_rate(engine, windows, seconds * 3)
    )

    say("stateful mode and window mode at windows 32 and 256, interleaved")
    cases: dict[str, Case] = {}
    for window in (32, 256):
        cases |= window_cases(config.model_copy(update={"window": window}), batch, device)
    rates = best_rates(cases, seconds)
    for window in (32, 256):
        result.stateful_events_per_s[window] = rates[f"stateful{window}"]
        result.stateful_step_only_events_per_s[window] = rates[f"step{window}"]
        result.window_mode_us_per_window[window] = 1e6 / rates[f"window{window}"]

    sizes = (64, 128, 256, 512) if device.type == "cpu" else (64, 256, 1024, 4096)
    for n_threads in sweep:
        say(f"sweep at {n_threads} thread(s): GEMM and batch sizes, interleaved")
        torch.set_num_threads(n_threads)
        sweep_cases = gemm_cases(device=device)
        for size in sizes:
            sample = _windows(size, config.window, config.input_size)
            sweep_cases[f"batch{size}"] = (partial(engine.predict, sample), size)
        rates = best_rates(sweep_cases, seconds, repeats=2)
        gemm = _gemm_gflops(rates)
        for size in sizes:
            rate = rates[f"batch{size}"]
            result.sweep.append(SweepPoint(n_threads, size, rate, rate * flops / 1e9, gemm))
    torch.set_num_threads(threads)
    return result


async def scheduler_rate(
    engine: InferenceEngine, windows: np.ndarray, seconds: float
) -> tuple[float, float]:
    """Windows/s and mean batch size when ``len(windows)`` keys each await their forecasts."""
    config = BatchConfig.model_validate({"max_size": len(windows), "max_wait_ms": 2.0})
    scheduler = BatchScheduler(engine, config)
    await scheduler.start()
    deadline = time.perf_counter() + seconds

    async def key(window: np.ndarray) -> int:
        done = 0
        while time.perf_counter() < deadline:
            await scheduler.submit(window)
            done += 1
        return done

    try:
        await scheduler.submit_many(windows)  # warm-up
        before = scheduler.stats()
        start = time.perf_counter()
        total = sum(await asyncio.gather(*(key(w) for w in windows)))
        elapsed = time.perf_counter() - start
        after = scheduler.stats()
    finally:
        await scheduler.stop()
    batches = after.batches - before.batches
    return total / elapsed, total / batches if batches else 0.0


def window_cases(
    config: ModelConfig, batch: int, device: torch.device | None = None
) -> dict[str, Case]:
    """Stateful events (with and without per-key bytes) and window-mode windows at one window."""
    window = config.window
    engine = InferenceEngine(build_forecaster(config, seed=0), device or torch.device("cpu"))
    x = _windows(batch, 1, config.input_size)[:, 0]
    stored = engine.states_to_bytes(engine.initial_state(batch))
    state = engine.initial_state(batch)

    def stateful_event() -> None:
        # the stream's per-event path: per-key bytes -> batch -> one step -> per-key bytes
        new_state = engine.states_from_bytes(stored)
        _, new_state = engine.step(x, new_state)
        engine.states_to_bytes(new_state)

    windows = _windows(batch, window, config.input_size)
    return {
        f"stateful{window}": (stateful_event, batch),
        f"step{window}": (partial(engine.step, x, state), batch),
        f"window{window}": (partial(engine.predict, windows), batch),
    }


def print_report(result: InferenceBenchResult) -> None:
    """Readable tables of the measured figures and the targets."""
    from rich.console import Console
    from rich.table import Table

    from vigil.bench.target_table import target_table

    console = Console()
    cfg = result.model
    title = (
        f"{cfg['cell']} hidden {cfg['hidden_size']} x {cfg['num_layers']} layers, "
        f"window {cfg['window']}; {result.device}, {result.threads} threads, "
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
        f"batched via BatchScheduler ({result.batch} keys awaiting)",
        f"{result.scheduler_windows_per_s:,.0f} windows/s "
        f"(mean batch {result.scheduler_mean_batch:.0f})",
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

    labels = {
        "batched_vs_loop": ("batched ÷ per-window loop", "{:.1f}x", "≥ {:.0f}x"),
        "gemm_fraction_batch": (f"model ÷ GEMM at batch {result.batch}", "{:.0%}", "≥ {:.0%}"),
        "gemm_fraction_best_sweep": ("model ÷ GEMM, best of sweep", "{:.0%}", "≥ {:.0%}"),
        "stateful_cost_256_vs_32": ("stateful µs/event, window 256 ÷ 32", "{:.2f}x", "≤ {:.1f}x"),
    }
    targets = target_table(result.targets(), labels)
    targets.add_row(
        "window mode µs/window, 256 ÷ 32 (contrast)", f"{result.window_cost_ratio:.1f}x", "", ""
    )
    targets.add_row(
        "stateful events/s ÷ per-window loop (contrast)", f"{result.stateful_vs_loop:.1f}x", "", ""
    )
    console.print(targets)
