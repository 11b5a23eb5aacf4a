"""Cells, forecaster modes, per-key state bytes, the inference engine and the normalizer."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from vigil.models.cells import CELLS, GRUCell, LSTMCell, PeepholeLSTMCell, RecurrentCell
from vigil.models.device import select_device
from vigil.models.forecaster import Forecaster, StateMismatchError, build_forecaster
from vigil.models.inference import InferenceEngine
from vigil.models.normalizer import RunningNormalizer
from vigil.models.state_codec import dumps, loads
from vigil.settings import ConfigError, ModelConfig

CELL_KINDS = sorted(CELLS)


def small_config(cell: str, **overrides: object) -> ModelConfig:
    values: dict[str, object] = {
        "cell": cell,
        "input_size": 3,
        "hidden_size": 8,
        "num_layers": 2,
        "window": 12,
        "horizon": 4,
    }
    values.update(overrides)
    return ModelConfig.model_validate(values)


# ---- cells --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_cell_shapes_one_step_and_sequence(kind: str) -> None:
    cell = CELLS[kind](5, 7)
    state = cell.initial_state(4, "cpu")
    assert len(state) == cell.state_arity
    assert all(t.shape == (4, 7) for t in state)
    h, new_state = cell(torch.randn(4, 5), state)
    assert h.shape == (4, 7)
    assert len(new_state) == cell.state_arity
    outputs, final = cell.sequence(torch.randn(4, 9, 5), state)
    assert outputs.shape == (4, 9, 7)
    assert torch.equal(outputs[:, -1], final[0])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_peephole_step_matches_hand_computation() -> None:
    hidden, inputs = 2, 3
    cell = PeepholeLSTMCell(inputs, hidden)
    rng = np.random.default_rng(7)
    w_ih = rng.normal(size=(4 * hidden, inputs))
    w_hh = rng.normal(size=(4 * hidden, hidden))
    b_ih = rng.normal(size=4 * hidden)
    b_hh = rng.normal(size=4 * hidden)
    peep = rng.normal(size=(3, hidden))
    with torch.no_grad():
        for param, value in [
            (cell.weight_ih, w_ih),
            (cell.weight_hh, w_hh),
            (cell.bias_ih, b_ih),
            (cell.bias_hh, b_hh),
            (cell.weight_peephole, peep),
        ]:
            param.copy_(torch.tensor(value, dtype=torch.float32))
    x = rng.normal(size=(1, inputs))
    h0 = rng.normal(size=(1, hidden))
    c0 = rng.normal(size=(1, hidden))

    # The textbook equations, one gate at a time (gate order i, f, g, o).
    def gate(k: int) -> np.ndarray:
        rows = slice(k * hidden, (k + 1) * hidden)
        return x @ w_ih[rows].T + h0 @ w_hh[rows].T + b_ih[rows] + b_hh[rows]

    i = _sigmoid(gate(0) + peep[0] * c0)
    f = _sigmoid(gate(1) + peep[1] * c0)
    g = np.tanh(gate(2))
    c1 = f * c0 + i * g
    o = _sigmoid(gate(3) + peep[2] * c1)
    h1 = o * np.tanh(c1)

    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    h, (h_state, c_state) = cell(as_tensor(x), (as_tensor(h0), as_tensor(c0)))
    np.testing.assert_allclose(h.detach().numpy(), h1, atol=1e-5)
    np.testing.assert_allclose(c_state.detach().numpy(), c1, atol=1e-5)
    assert torch.equal(h, h_state)


def test_standard_cells_match_torch_modules() -> None:
    """Same layout as nn.LSTM / nn.GRU, so the fused kernels compute the textbook cells."""
    torch.manual_seed(0)
    for cell, reference in [
        (LSTMCell(3, 5), torch.nn.LSTM(3, 5)),
        (GRUCell(3, 5), torch.nn.GRU(3, 5)),
    ]:
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                reference.get_parameter(f"{name}_l0").copy_(cell.get_parameter(name))
        xs = torch.randn(2, 6, 3)
        expected, _ = reference(xs.transpose(0, 1))
        # the generic one-step-at-a-time loop, i.e. the stateful cell, not the fused sequence
        outputs, _ = RecurrentCell.sequence(cell, xs, cell.initial_state(2))
        torch.testing.assert_close(outputs, expected.transpose(0, 1), atol=1e-6, rtol=1e-5)


# ---- forecaster ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_forecaster_shapes_in_both_modes(kind: str) -> None:
    config = small_config(kind)
    model = build_forecaster(config, seed=1)
    windows = torch.randn(5, config.window, config.input_size)
    assert model(windows).shape == (5, config.horizon, config.input_size)
    state = model.initial_state(5)
    assert all(t.shape == (config.num_layers, 5, config.hidden_size) for t in state)
    forecast, new_state = model.step(windows[:, 0], state)
    assert forecast.shape == (5, config.horizon, config.input_size)
    assert [t.shape for t in new_state] == [t.shape for t in state]
    with pytest.raises(ValueError, match="F=3"):
        model(torch.randn(5, config.window, 2))


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_stateful_steps_equal_window_mode_from_zero_state(kind: str) -> None:
    config = small_config(kind, dropout=0.3)
    model = build_forecaster(config, seed=3).eval()  # eval: dropout off in both modes
    windows = torch.randn(6, config.window, config.input_size)
    with torch.inference_mode():
        expected = model(windows)
        state = model.initial_state(6)
        for t in range(config.window):
            forecast, state = model.step(windows[:, t], state)
    torch.testing.assert_close(forecast, expected, atol=1e-5, rtol=0)
    assert not torch.equal(forecast[0], forecast[1])  # rows really differ, nothing degenerate


def test_seed_makes_weights_reproducible_and_leaves_global_rng_alone() -> None:
    config = small_config("lstm")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_forecaster(config, seed=9)
    after = torch.rand(1)
    b = build_forecaster(config, seed=9)
    c = build_forecaster(config, seed=10)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.cells[0].weight_ih, c.cells[0].weight_ih)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_state_bytes_round_trip_and_stack_split(kind: str) -> None:
    config = small_config(kind)
    model = build_forecaster(config, seed=2).eval()
    with torch.inference_mode():
        _, state = model.step(torch.randn(3, config.input_size), model.initial_state(3))
    blobs = model.states_to_bytes(state)
    assert len(blobs) == 3
    assert all(len(b) == model.state_nbytes for b in blobs)
    assert blobs[1] == model.state_to_bytes(state, 1)
    one = model.state_from_bytes(blobs[1])
    assert all(torch.equal(t[:, 0], s[:, 1]) for t, s in zip(one, state, strict=True))

    # a new key (None) gets the zero state; the others come back exactly
    restored = model.states_from_bytes([blobs[2], None, blobs[0]])
    assert all(torch.equal(r[:, 0], s[:, 2]) for r, s in zip(restored, state, strict=True))
    assert all(not r[:, 1].any() for r in restored)
    assert all(torch.equal(r[:, 2], s[:, 0]) for r, s in zip(restored, state, strict=True))

    pieces = model.split_state(state)
    assert len(pieces) == 3
    stacked = model.stack_states(pieces)
    assert all(torch.equal(a, b) for a, b in zip(stacked, state, strict=True))


def test_state_bytes_from_another_model_shape_are_rejected() -> None:
    lstm = build_forecaster(small_config("lstm"), seed=0)
    wider = build_forecaster(small_config("lstm", hidden_size=16), seed=0)
    peephole = build_forecaster(small_config("peephole"), seed=0)  # same byte size as lstm
    blob = lstm.state_to_bytes(lstm.initial_state(1))
    with pytest.raises(StateMismatchError, match="bytes"):
        wider.state_from_bytes(blob)
    with pytest.raises(StateMismatchError, match="another model shape"):
        peephole.state_from_bytes(blob)
    with pytest.raises(StateMismatchError):
        lstm.state_from_bytes(blob[:-4])

    # the engine (the stream's path) restarts such keys from zero instead of failing the batch
    engine = InferenceEngine(wider, torch.device("cpu"))
    _, moved = engine.step(np.ones((1, 3), dtype=np.float32), engine.initial_state(1))
    good = engine.states_to_bytes(moved)[0]
    restored = engine.states_from_bytes([good, blob])
    assert torch.equal(restored[0][:, 0], moved[0][:, 0])
    assert not restored[0][:, 1].any() and not restored[1][:, 1].any()


def test_flops_count_matches_formula_for_default_lstm() -> None:
    model = Forecaster(
        ModelConfig.model_validate({})
    )  # hidden 64, 2 layers, window 64, input 1 + 4 calendar columns, horizon 1
    per_step = (2 * 256 * (1 + 4 + 64) + 2 * 256) + (2 * 256 * (64 + 64) + 2 * 256)
    assert model.flops_per_window() == 64 * per_step + 2 * 64 * 1


# ---- device and engine --------------------------------------------------------------------
def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    auto = select_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="VIGIL_DEVICE"):
            select_device("cuda")


def test_engine_predict_step_and_atomic_swap() -> None:
    config = small_config("gru")
    model = build_forecaster(config, seed=4)
    engine = InferenceEngine(model, torch.device("cpu"))
    windows = np.random.default_rng(0).normal(size=(3, config.window, 3)).astype(np.float32)
    first, version = engine.predict_versioned(windows)
    assert first.shape == (3, config.horizon, 3) and first.dtype == np.float32
    assert version == engine.version

    # the engine holds a private copy: changing the caller's model does not change predictions
    with torch.no_grad():
        model.head.bias.add_(1.0)
    np.testing.assert_array_equal(engine.predict(windows), first)

    old = engine.swap(model)
    assert old == version and engine.version != version
    np.testing.assert_allclose(engine.predict(windows), first + 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="horizon"):
        engine.swap(build_forecaster(small_config("gru", horizon=1)))

    state = engine.states_from_bytes([None, None, None])
    for t in range(config.window):
        forecast, state = engine.step(windows[:, t], state)
    np.testing.assert_allclose(forecast, engine.predict(windows), atol=1e-5)
    assert len(engine.states_to_bytes(state)) == 3

    bad = windows.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        engine.predict(bad)


def test_engine_swap_is_safe_under_concurrent_predicts() -> None:
    config = small_config("lstm", window=4)
    engine = InferenceEngine(build_forecaster(config, seed=0), torch.device("cpu"), "a")
    windows = np.zeros((2, 4, 3), dtype=np.float32)
    valid = {"a": engine.predict(windows)}
    replacement = build_forecaster(config, seed=1)
    errors: list[BaseException] = []
    seen: list[tuple[np.ndarray, str]] = []

    def reader() -> None:
        try:
            for _ in range(200):
                seen.append(engine.predict_versioned(windows))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    engine.swap(replacement, "b")
    for thread in threads:
        thread.join()
    valid["b"] = engine.predict(windows)
    assert not errors
    # every result is exactly the output of the version it says produced it
    for output, version in seen:
        np.testing.assert_array_equal(output, valid[version])


# ---- normalizer ---------------------------------------------------------------------------
def test_normalizer_matches_numpy_and_skips_missing() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(loc=[5.0, -200.0], scale=[2.0, 30.0], size=(500, 2))
    norm = RunningNormalizer(channels=2)
    for k, row in enumerate(data):
        norm.update([float(row[0]), None if k % 5 == 0 else float(row[1])])
    second = data[np.arange(500) % 5 != 0, 1]
    np.testing.assert_allclose(norm.mean, [data[:, 0].mean(), second.mean()], rtol=1e-10)
    np.testing.assert_allclose(norm.std(), [data[:, 0].std(), second.std()], rtol=1e-10)
    assert norm.count == [500, 400]

    z = norm.normalize([7.0, None])
    assert z[1] is None
    assert z[0] == pytest.approx((7.0 - data[:, 0].mean()) / data[:, 0].std())
    back = norm.denormalize(np.array([[z[0], 0.0]]))
    np.testing.assert_allclose(back, [[7.0, second.mean()]])

    restored = loads(dumps(norm), RunningNormalizer)
    assert restored == norm


def test_normalizer_flat_series_and_outliers_stay_finite() -> None:
    norm = RunningNormalizer(channels=1, clip=20.0)
    for _ in range(100):
        norm.update([3.0])
    assert norm.std()[0] == pytest.approx(3e-3)  # relative floor: 1e-3 * |mean|
    assert norm.normalize([3.0 + 3e-3])[0] == pytest.approx(1.0)
    assert norm.normalize([1e12])[0] == 20.0
    assert norm.normalize([float("nan")])[0] is None
    zero = RunningNormalizer(channels=1)
    zero.update([0.0])
    assert zero.std()[0] == pytest.approx(1e-4)  # absolute floor


def test_normalizer_max_count_follows_a_moving_level() -> None:
    frozen = RunningNormalizer(channels=1)
    tracking = RunningNormalizer(channels=1, max_count=50)
    for value in [0.0] * 1000 + [100.0] * 300:
        frozen.update([value])
        tracking.update([value])
    assert frozen.mean[0] < 30.0
    assert tracking.mean[0] > 99.0


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_window_mode_trains_every_parameter(kind: str) -> None:
    config = small_config(kind, dropout=0.2, residual=False)
    model = build_forecaster(config, seed=5).train()
    windows = torch.randn(4, config.window, config.input_size)
    loss = model(windows).pow(2).mean()
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_a_residual_model_starts_as_persistence_and_still_learns_everything(kind: str) -> None:
    config = small_config(kind)
    model = build_forecaster(config, seed=5)
    windows = torch.randn(4, config.window, config.input_size)
    with torch.no_grad():
        start = model(windows)
    assert torch.equal(start, windows[:, -1:, :].expand(-1, config.horizon, -1))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # the first step moves the head, after which gradients reach the cells
        optimiser.zero_grad()
        (model(windows) - 1.0).pow(2).mean().backward()
        optimiser.step()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_calendar_inputs_are_optional_columns() -> None:
    """A model with calendar inputs reads windows without them as zero context; one without
    them ignores the columns; the forecast always has the values' width."""
    torch.manual_seed(0)
    with_calendar = build_forecaster(ModelConfig(hidden_size=8, num_layers=1, calendar="on"), 0)
    without = build_forecaster(ModelConfig(hidden_size=8, num_layers=1, calendar="off"), 0)
    assert with_calendar.config.features == 5 and without.config.features == 1
    values = torch.randn(3, 10, 1)
    calendar = torch.randn(3, 10, 4)
    wide = torch.cat([values, calendar], dim=-1)
    zeros = torch.cat([values, torch.zeros(3, 10, 4)], dim=-1)
    for model in (with_calendar, without):
        assert model(values).shape == model(wide).shape == (3, 1, 1)
    torch.testing.assert_close(with_calendar(values), with_calendar(zeros))
    torch.testing.assert_close(without(values), without(wide))
    nn_init = with_calendar.head.weight
    with torch.no_grad():
        nn_init.normal_()  # a trained head: the calendar now changes the forecast
    assert not torch.allclose(with_calendar(values), with_calendar(wide))
    step, _ = with_calendar.step(wide[:, -1], with_calendar.initial_state(3))
    assert step.shape == (3, 1, 1)
    with pytest.raises(ValueError, match="calendar"):
        with_calendar(torch.randn(3, 10, 3))
