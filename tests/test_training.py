"""OnlineTrainer: improves and promotes on a learnable series, guards against NaN and divergence,
honours the lr scale, and runs on a background thread that stops cleanly."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from vigil.models import training
from vigil.models.replay import ReplayBuffer
from vigil.models.training import OnlineTrainer, RoundResult
from vigil.settings import ModelConfig, TrainingConfig

WINDOW, HORIZON = 16, 1


class TinyForecaster(nn.Module):
    """Stand-in with the forecaster contract: ``[B, T, F] -> [B, H, F]``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.lstm = nn.LSTM(config.input_size, config.hidden_size, batch_first=True)
        self.head = nn.Linear(config.hidden_size, config.horizon * config.input_size)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(windows)
        y = self.head(out[:, -1])
        return y.view(windows.shape[0], self.config.horizon, self.config.input_size)


MODEL_CONFIG = ModelConfig.model_validate(
    {"input_size": 1, "hidden_size": 16, "num_layers": 1, "window": WINDOW, "horizon": HORIZON}
)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyForecaster(MODEL_CONFIG)


def _config(**overrides: Any) -> TrainingConfig:
    base: dict[str, Any] = {
        "learning_rate": 0.01,
        "batch_size": 32,
        "replay_capacity": 512,
        "recent_fraction": 0.5,
        "holdout_size": 32,
        "steps_per_round": 30,
        "min_examples": 100,
        "promote_margin": 0.02,
    }
    return TrainingConfig(**{**base, **overrides})


def _sine_buffer(config: TrainingConfig, n: int = 400, seed: int = 0) -> ReplayBuffer:
    """Windows of a noisy sine (period 20) and the next value: easy to learn, hard to fake."""
    rng = np.random.default_rng(seed)
    series = np.sin(2 * np.pi * np.arange(n + WINDOW + 1) / 20) + rng.normal(
        0, 0.05, n + WINDOW + 1
    )
    buffer = ReplayBuffer(
        config.replay_capacity, config.recent_fraction, config.holdout_size, seed=seed
    )
    for i in range(n):
        window = series[i : i + WINDOW, None]
        target = series[i + WINDOW : i + WINDOW + HORIZON, None]
        buffer.add(window, target)
    return buffer


def _holdout_loss(model: nn.Module, buffer: ReplayBuffer) -> float:
    x, y = buffer.holdout()
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(torch.from_numpy(x)), torch.from_numpy(y)))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_rounds_on_a_sine_improve_the_holdout_loss_and_promote() -> None:
    config = _config()
    buffer = _sine_buffer(config)
    live = _model()
    promoted: list[tuple[nn.Module, dict[str, Any]]] = []
    trainer = OnlineTrainer(live, buffer, config, lambda m, metrics: promoted.append((m, metrics)))
    before = _holdout_loss(live, buffer)

    results = [trainer.run_round() for _ in range(6)]

    assert any(r.promoted for r in results), [r.reason for r in results]
    after = _holdout_loss(trainer.live_model, buffer)
    assert after < 0.5 * before
    assert trainer.live_model is promoted[-1][0]
    assert trainer.live_model is not live  # the original object was never trained in place
    metrics = promoted[-1][1]
    assert metrics["candidate_loss"] < metrics["live_loss"] * (1 - config.promote_margin)
    assert metrics["candidate_loss"] == pytest.approx(after, rel=1e-4)
    stats = trainer.stats
    assert stats.rounds == 6 and stats.steps == 6 * config.steps_per_round
    assert stats.promotions == len(promoted)
    assert stats.promotions + sum(stats.rejections.values()) == 6


def test_trains_the_real_forecaster() -> None:
    from vigil.models.forecaster import build_forecaster

    config = _config()
    buffer = _sine_buffer(config)
    live = build_forecaster(MODEL_CONFIG.model_copy(update={"num_layers": 2}), seed=0)
    trainer = OnlineTrainer(live, buffer, config)
    before = _holdout_loss(live, buffer)
    results = [trainer.run_round() for _ in range(4)]
    assert any(r.promoted for r in results), [r.reason for r in results]
    assert _holdout_loss(trainer.live_model, buffer) < before


def test_not_enough_examples_skips_the_round() -> None:
    config = _config(min_examples=500)
    trainer = OnlineTrainer(_model(), _sine_buffer(config, n=200), config)
    result = trainer.run_round()
    assert (result.status, result.reason, result.steps) == ("skipped", "not_enough_examples", 0)
    assert trainer.stats.rounds == 0 and trainer.stats.skipped == 1


@pytest.mark.parametrize(
    ("poison_at_step", "steps", "reason"),
    [(0, 5, "nonfinite_loss"), (4, 5, "nonfinite_weights")],
)
def test_guard_rejects_a_nan_candidate_and_keeps_the_live_model(
    monkeypatch: pytest.MonkeyPatch, poison_at_step: int, steps: int, reason: str
) -> None:
    config = _config(steps_per_round=steps)
    live = _model()
    saved = _state(live)
    promoted: list[nn.Module] = []
    trainer = OnlineTrainer(live, _sine_buffer(config), config, lambda m, _: promoted.append(m))
    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def poisoned_step(self: torch.optim.Adam, *args: Any, **kwargs: Any) -> Any:
        out = real_step(self, *args, **kwargs)
        if calls["n"] == poison_at_step:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        calls["n"] += 1
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned_step)
    result = trainer.run_round()

    assert (result.status, result.reason) == ("rejected", reason)
    assert promoted == []
    assert trainer.live_model is live
    assert _same_weights(live, saved)
    assert trainer.stats.rejections == {reason: 1}


def test_nan_loss_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config()
    live = _model()
    saved = _state(live)
    trainer = OnlineTrainer(live, _sine_buffer(config), config)
    real_loss = training.functional.mse_loss

    def nan_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return real_loss(pred, target) * float("nan")

    monkeypatch.setattr(training.functional, "mse_loss", nan_loss)
    result = trainer.run_round()
    assert (result.status, result.reason, result.steps) == ("rejected", "nonfinite_loss", 0)
    assert trainer.live_model is live and _same_weights(live, saved)


def test_a_diverging_candidate_is_rejected() -> None:
    config = _config(learning_rate=0.5)
    live = _model()
    saved = _state(live)
    trainer = OnlineTrainer(live, _sine_buffer(config), config)
    trainer.set_lr_scale(1000.0)  # lr 500: Adam moves every weight by ~500 a step
    result = trainer.run_round()
    assert (result.status, result.reason) == ("rejected", "diverged")
    assert result.steps < config.steps_per_round  # caught within the round, not at the end
    assert trainer.live_model is live and _same_weights(live, saved)


def test_lr_scale_sets_the_optimiser_lr(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(steps_per_round=3)
    trainer = OnlineTrainer(_model(), _sine_buffer(config), config)
    seen: list[float] = []
    real_step = torch.optim.Adam.step

    def recording_step(self: torch.optim.Adam, *args: Any, **kwargs: Any) -> Any:
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    trainer.run_round()
    trainer.set_lr_scale(4.0)
    assert trainer.lr == pytest.approx(0.04)
    result = trainer.run_round()
    assert seen == pytest.approx([0.01] * 3 + [0.04] * 3)
    assert result.lr == pytest.approx(0.04)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr scale"):
            trainer.set_lr_scale(bad)


def test_no_clear_gain_is_not_promoted() -> None:
    config = _config(promote_margin=0.99, steps_per_round=5)
    live = _model()
    trainer = OnlineTrainer(live, _sine_buffer(config), config)
    result = trainer.run_round()
    assert (result.status, result.reason) == ("rejected", "no_improvement")
    assert result.candidate_loss is not None and result.live_loss is not None
    assert trainer.live_model is live


def test_failed_promotion_callback_keeps_the_live_model() -> None:
    config = _config()
    live = _model()

    def broken(model: nn.Module, metrics: dict[str, Any]) -> None:
        raise RuntimeError("registry down")

    trainer = OnlineTrainer(live, _sine_buffer(config), config, broken)
    result = trainer.run_round()
    assert (result.status, result.reason) == ("rejected", "promote_failed")
    assert trainer.live_model is live


def test_live_model_replaced_mid_round_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config()
    buffer = _sine_buffer(config)
    trainer = OnlineTrainer(_model(), buffer, config)
    rolled_back = _model(seed=1)
    real_holdout = buffer.holdout

    def holdout_during_rollback() -> tuple[np.ndarray, np.ndarray]:
        trainer.set_live(rolled_back)  # e.g. an operator rolls back while the round runs
        return real_holdout()

    monkeypatch.setattr(buffer, "holdout", holdout_during_rollback)
    result = trainer.run_round()
    assert (result.status, result.reason) == ("rejected", "live_changed")
    assert trainer.live_model is rolled_back


def test_background_thread_runs_rounds_and_stops_cleanly() -> None:
    config = _config(steps_per_round=5)
    buffer = _sine_buffer(config, n=60)  # below min_examples: nothing to do yet
    rounds: list[RoundResult] = []
    # idle_check_s is long: within this test only notify() wakes the thread.
    trainer = OnlineTrainer(
        _model(), buffer, config, min_interval_s=0.0, idle_check_s=30, on_round=rounds.append
    )

    def feed(n: int) -> None:
        for i in range(n):
            x = np.sin((np.arange(WINDOW) + i) / 3)[:, None]
            buffer.add(x, np.full((HORIZON, 1), np.sin((WINDOW + i) / 3)))
        trainer.notify()

    def wait_for_rounds(n: int) -> None:
        deadline = time.monotonic() + 30
        while trainer.stats.rounds < n and time.monotonic() < deadline:
            time.sleep(0.02)

    trainer.start()
    assert trainer.running
    time.sleep(0.3)
    assert trainer.stats.rounds == 0
    feed(100)  # min_examples reached: the first round runs
    wait_for_rounds(1)
    time.sleep(0.3)
    assert trainer.stats.rounds == 1  # no new examples, no new round
    feed(config.batch_size)  # enough new examples for another round
    wait_for_rounds(2)
    trainer.stop(timeout=10)
    assert not trainer.running
    stats = trainer.stats
    assert stats.rounds == 2
    assert stats.steps == sum(r.steps for r in rounds) == 2 * config.steps_per_round
    feed(config.batch_size)
    time.sleep(0.3)
    assert trainer.stats.rounds == 2  # stopped means stopped


class _FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


def test_cpu_budget_rests_in_proportion_to_the_work(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _FakeClock()
    monkeypatch.setattr(training.time, "perf_counter", clock.perf_counter)
    rests: list[float] = []

    def sleep(seconds: float) -> bool:
        rests.append(seconds)
        clock.now += seconds
        return False

    budget = training.CpuBudget(0.25, sleep)
    budget.start()
    clock.now += 0.02  # a 20 ms step
    budget.rest()
    clock.now += 0.01
    budget.rest()  # the earlier rest is not counted as work
    assert rests == pytest.approx([0.06, 0.03])
    assert budget.rested == pytest.approx(0.09)
    clock.now += 5.0  # idle between rounds ...
    budget.start()  # ... is not work either
    clock.now += 0.004
    budget.rest()
    assert rests[-1] == pytest.approx(0.012)
    clock.now += 2.0  # a one-off slow slice (kernel set-up) ...
    budget.rest()
    assert rests[-1] == pytest.approx(1.0)  # ... rests at most max_rest_s, not 6 s
    assert training.CpuBudget(1.0, sleep).share == 1.0
    with pytest.raises(ValueError, match="cpu share"):
        training.CpuBudget(0.0, sleep)


def test_a_round_paces_after_every_step_and_after_the_evaluation() -> None:
    config = _config(steps_per_round=7)
    trainer = OnlineTrainer(_model(), _sine_buffer(config), config)
    calls: list[int] = []
    result = trainer.run_round(pace=lambda: calls.append(trainer.stats.steps))
    assert result.steps == 7
    assert calls == [1, 2, 3, 4, 5, 6, 7, 7]  # one per step, one after the shadow evaluation


class MeteredBudget(training.CpuBudget):
    """The trainer's own budget, also reading the thread's CPU clock around each slice of work:
    the check below compares rests with CPU time actually used, which a busy machine cannot
    shrink (wall time it can stretch)."""

    made: list[MeteredBudget] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slices: list[tuple[float, float]] = []  # (CPU seconds worked, seconds rested)
        self._cpu_mark = time.thread_time()
        MeteredBudget.made.append(self)

    def start(self) -> None:
        super().start()
        self._cpu_mark = time.thread_time()  # after the wall mark: the CPU slice lies inside

    def rest(self) -> None:
        worked = time.thread_time() - self._cpu_mark
        rested_before = self.rested
        super().rest()
        self.slices.append((worked, self.rested - rested_before))
        self._cpu_mark = time.thread_time()


def test_the_background_thread_keeps_to_its_cpu_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a share of 0.2 the thread rests at least four times the CPU time it computed, after
    every slice (up to the one-rest cap). CPU time, not wall time: a slice of work takes at least
    as much wall time as CPU time, so the check holds however busy the machine is."""
    monkeypatch.setattr(MeteredBudget, "made", [])
    monkeypatch.setattr(training, "CpuBudget", MeteredBudget)
    config = _config(steps_per_round=10, cpu_share=0.2)
    buffer = _sine_buffer(config)
    rounds: list[RoundResult] = []
    trainer = OnlineTrainer(
        _model(), buffer, config, min_interval_s=0.0, idle_check_s=30, on_round=rounds.append
    )
    trainer.start()
    trainer.notify()
    deadline = time.monotonic() + 120  # a bound on a hang only; nothing is timed
    while not rounds and time.monotonic() < deadline:
        time.sleep(0.02)
    trainer.stop(timeout=30)
    assert rounds and rounds[0].steps == 10, "the thread ran no round"
    [budget] = MeteredBudget.made
    assert budget.share == 0.2
    assert len(budget.slices) >= 11  # a rest after each step and after the evaluation
    for worked, rested in budget.slices:
        owed = min(worked * (1 / 0.2 - 1), budget.max_rest_s)
        assert rested >= owed * 0.99 - 1e-4, (worked, rested)
    assert sum(rested for _, rested in budget.slices) > 0
