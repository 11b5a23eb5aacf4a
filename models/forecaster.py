"""The forecaster: stacked recurrent cells and a linear head that predicts the next H values.

Two ways to run the same weights:

* **window mode** — ``forward(windows [B, T, F]) -> [B, H, F]`` replays a key's last T normalised
  vectors from a zero state. Simple and stateless, but every event costs T steps.
* **stateful mode** — ``step(x [B, F], state) -> (forecast [B, H, F], state)`` carries each key's
  recurrent state from event to event, so an event costs ONE step whatever the window length.
  Per-key states travel to Redis as bytes (:meth:`Forecaster.state_to_bytes`) and are stacked
  into a batch (:meth:`Forecaster.stack_states`) and split back for many keys at once.

Both modes share every parameter; from a zero state, T calls of :meth:`Forecaster.step` give the
same forecast as one :meth:`Forecaster.forward` over the same T vectors.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from vigil.models.calendar import CALENDAR_FEATURES
from vigil.models.cells import CELLS, RecurrentCell, State
from vigil.models.config import ModelConfig

log = logging.getLogger(__name__)

_STATE_MAGIC = b"VGS1"
_STATE_HEADER = struct.Struct("<4sBHH")  # magic, cell code, layers, hidden size
_CELL_CODES = {name: code for code, name in enumerate(sorted(CELLS))}


class StateMismatchError(ValueError):
    """Stored state bytes do not fit this model (other cell, depth or width, or truncated)."""


class Forecaster(nn.Module):
    """Stacked recurrent cells (dropout between layers) and a linear head over the last h."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config.model_copy()
        cell_type = CELLS[config.cell]
        # the seasonal-lag columns skip the recurrent cells: they reach the output through a
        # per-step, per-channel gain (below), so the cells see the values and the calendar
        recurrent_inputs = config.features - config.lag_features
        sizes = [recurrent_inputs] + [config.hidden_size] * config.num_layers
        self.layers = nn.ModuleList(
            cell_type(sizes[i], config.hidden_size) for i in range(config.num_layers)
        )
        self.head = nn.Linear(config.hidden_size, config.horizon * config.input_size)
        if config.residual:
            # Start as persistence (forecast = last value) and learn the change online: a fresh
            # group serves sensible forecasts from its first event instead of the running mean.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        if config.lag_features:
            # forecast += gain * (the change over the same steps one season ago): zero at first,
            # so switching the inputs on (a key's season found) changes nothing until learned
            self.season_gain = nn.Parameter(torch.zeros(config.horizon, config.input_size))

    # ---- shape ---------------------------------------------------------------------------
    @property
    def cells(self) -> list[RecurrentCell]:
        return [layer for layer in self.layers if isinstance(layer, RecurrentCell)]

    @property
    def state_arity(self) -> int:
        """Tensors in a state: 2 (h, c) for the LSTMs, 1 (h) for the GRU."""
        return self.cells[0].state_arity

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def flops_per_window(self, window: int | None = None) -> int:
        """Matmul and bias FLOPs of one window in window mode (T steps per layer plus the head)."""
        steps = self.config.window if window is None else window
        recurrent = sum(cell.flops_per_step(1) for cell in self.cells) * steps
        return recurrent + 2 * self.head.in_features * self.head.out_features

    # ---- window mode ---------------------------------------------------------------------
    def forward(self, windows: Tensor) -> Tensor:
        """``windows [B, T, F]`` (normalised) → forecast of the next H values ``[B, H, F]``."""
        forecast, _ = self.unroll(windows, None)
        return forecast

    def unroll(self, windows: Tensor, state: State | None) -> tuple[Tensor, State]:
        """Run ``[B, T, F]`` from ``state`` (zero when None); forecast after the last step."""
        windows = self._adapt(windows, 3)
        if state is None:
            state = self.initial_state(windows.shape[0], windows.device)
        layer_input = windows[..., : windows.shape[-1] - self.config.lag_features]
        finals: list[State] = []
        for index, cell in enumerate(self.cells):
            if index:
                layer_input = self._between_layers(layer_input)
            layer_input, final = cell.sequence(layer_input, _layer_state(state, index))
            finals.append(final)
        return self._forecast(layer_input[:, -1], windows[:, -1]), _stack_layers(finals)

    # ---- stateful mode -------------------------------------------------------------------
    def initial_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """Zero state for ``batch`` keys: a tuple of ``[num_layers, batch, hidden]`` tensors."""
        device = self.device if device is None else device
        shape = (self.config.num_layers, batch, self.config.hidden_size)
        dtype = self.head.weight.dtype
        return tuple(
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(self.state_arity)
        )

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One event per key: ``x [B, F]`` → ``(forecast [B, H, F], new state)``."""
        x = self._adapt(x, 2)
        layer_input = x[..., : x.shape[-1] - self.config.lag_features]
        finals: list[State] = []
        for index, cell in enumerate(self.cells):
            if index:
                layer_input = self._between_layers(layer_input)
            layer_input, final = cell(layer_input, _layer_state(state, index))
            finals.append(final)
        return self._forecast(layer_input, x), _stack_layers(finals)

    # ---- per-key state -------------------------------------------------------------------
    @staticmethod
    def stack_states(states: Sequence[State]) -> State:
        """Per-key states (batch 1 or more each) → one batched state, in order."""
        if not states:
            raise ValueError("no states to stack")
        return tuple(torch.cat(parts, dim=1) for parts in zip(*states, strict=True))

    @staticmethod
    def split_state(state: State) -> list[State]:
        """A batched state → one batch-1 state per key (views, no copy)."""
        pieces = [tensor.split(1, dim=1) for tensor in state]
        return [tuple(parts) for parts in zip(*pieces, strict=True)]

    @property
    def state_nbytes(self) -> int:
        """Size of one key's state in bytes, header included."""
        floats = self.state_arity * self.config.num_layers * self.config.hidden_size
        return _STATE_HEADER.size + 4 * floats

    def state_to_bytes(self, state: State, index: int = 0) -> bytes:
        """Key ``index`` of a batched state as compact bytes (header + little-endian float32)."""
        rows = torch.stack([tensor[:, index] for tensor in state]).detach().to("cpu")
        return self._header() + rows.numpy().astype("<f4", copy=False).tobytes()

    def states_to_bytes(self, state: State) -> list[bytes]:
        """Every key of a batched state as bytes, with one device-to-host copy for all."""
        array = torch.stack(list(state)).detach().to("cpu").numpy()  # [S, L, N, H]
        per_key = np.ascontiguousarray(array.transpose(2, 0, 1, 3), dtype="<f4")  # [N, S, L, H]
        raw, header = per_key.tobytes(), self._header()
        size = per_key[0].nbytes if len(per_key) else 0
        return [header + raw[k * size : (k + 1) * size] for k in range(len(per_key))]

    def state_from_bytes(self, data: bytes, device: torch.device | str | None = None) -> State:
        """Bytes from :meth:`state_to_bytes` → a batch-1 state on ``device`` (the model's)."""
        return self.states_from_bytes([data], device)

    def states_from_bytes(
        self,
        items: Sequence[bytes | None],
        device: torch.device | str | None = None,
        *,
        reset_mismatched: bool = False,
    ) -> State:
        """Many keys' bytes (None = a new key, zero state) → one batched state, one copy.

        Bytes written by a model of another shape raise :class:`StateMismatchError`, or, with
        ``reset_mismatched``, start that key from the zero state (the only state such a key can
        have under this model) and log how many were reset.
        """
        header, total = self._header(), self.state_nbytes
        zero = bytes(total - len(header))
        bodies: list[bytes | memoryview] = []
        reset = 0
        for data in items:
            if data is None:
                bodies.append(zero)
            elif len(data) == total and data[: len(header)] == header:
                bodies.append(memoryview(data)[len(header) :])
            elif reset_mismatched:
                reset += 1
                bodies.append(zero)
            else:
                raise self._mismatch(data)
        if reset:
            log.warning("%d stored state(s) did not fit the model and were reset", reset)
        shape = (len(items), self.state_arity, self.config.num_layers, self.config.hidden_size)
        flat = np.frombuffer(b"".join(bodies), dtype="<f4").reshape(shape)
        array = flat.transpose(1, 2, 0, 3).astype(np.float32, order="C")  # a writable copy
        tensor = torch.from_numpy(array).to(self.device if device is None else device)
        return tuple(tensor.unbind(0))

    # ---- internals -----------------------------------------------------------------------
    def _header(self) -> bytes:
        code = _CELL_CODES[self.config.cell]
        return _STATE_HEADER.pack(
            _STATE_MAGIC, code, self.config.num_layers, self.config.hidden_size
        )

    def _mismatch(self, data: bytes) -> StateMismatchError:
        """Say what differs between stored bytes and this model's state layout."""
        if len(data) != self.state_nbytes:
            return StateMismatchError(
                f"state has {len(data)} bytes; this {self.config.cell} model needs "
                f"{self.state_nbytes}"
            )
        magic, code, layers, hidden = _STATE_HEADER.unpack_from(data)
        cells = {code: name for name, code in _CELL_CODES.items()}
        return StateMismatchError(
            f"state was written by another model shape (magic {magic!r}, cell "
            f"{cells.get(code, code)}, {layers} layers, hidden {hidden}); this one is "
            f"{self.config.cell}, {self.config.num_layers} layers, hidden {self.config.hidden_size}"
        )

    def _between_layers(self, tensor: Tensor) -> Tensor:
        if self.config.dropout and self.training:
            return functional.dropout(tensor, self.config.dropout, training=True)
        return tensor

    def _forecast(self, last_hidden: Tensor, last_input: Tensor) -> Tensor:
        out = self.head(last_hidden)
        out = out.view(last_hidden.shape[0], self.config.horizon, self.config.input_size)
        lags = self.config.lag_features
        if lags:
            seasonal = last_input[..., last_input.shape[-1] - lags :]
            out = out + self.season_gain * seasonal.reshape(out.shape)
        if not self.config.residual:
            return out
        return out + last_input[..., : self.config.input_size].unsqueeze(1)

    def _adapt(self, tensor: Tensor, ndim: int) -> Tensor:
        """Rows with or without the calendar and seasonal-lag columns, as this model takes them:
        a block the model takes but the rows lack reads as zeros (no context), a block the rows
        carry but the model does not take is dropped. A registry version stored before a
        setting keeps serving a group that now sends the columns, and the other way round."""
        width = tensor.shape[-1] if tensor.ndim else -1
        layouts = input_layouts(self.config)
        if tensor.ndim != ndim or width not in layouts:
            expected = "[B, T, F]" if ndim == 3 else "[B, F]"
            allowed = " or ".join(str(w) for w in sorted(layouts))
            raise ValueError(
                f"expected {expected} with F={allowed} (values, then the calendar and seasonal-"
                f"lag inputs if any), got {tuple(tensor.shape)}"
            )
        if width == self.config.features:
            return tensor
        calendar, lags = layouts[width]
        values = self.config.input_size
        parts = [tensor[..., :values]]
        for present, wanted, start, size in (
            (calendar, self.config.calendar != "off", values, CALENDAR_FEATURES),
            (lags, self.config.lag_features > 0, values + calendar, self.config.lag_features),
        ):
            if not wanted:
                continue
            if present:
                parts.append(tensor[..., start : start + size])
            else:
                parts.append(tensor.new_zeros((*tensor.shape[:-1], size)))
        return torch.cat(parts, dim=-1)


def input_layouts(config: ModelConfig) -> dict[int, tuple[int, int]]:
    """Row widths a model of ``config`` accepts → (calendar columns, lag columns) in them: its
    own layout first, then values only, with the calendar, with the lags, with both."""
    values, lags = config.input_size, config.horizon * config.input_size
    own = (CALENDAR_FEATURES if config.calendar != "off" else 0, config.lag_features)
    layouts: dict[int, tuple[int, int]] = {config.features: own}
    for calendar, lag in ((0, 0), (CALENDAR_FEATURES, 0), (0, lags), (CALENDAR_FEATURES, lags)):
        layouts.setdefault(values + calendar + lag, (calendar, lag))
    return layouts


def build_forecaster(config: ModelConfig, seed: int | None = None) -> Forecaster:
    """A fresh forecaster; ``seed`` makes the weights reproducible without touching global RNG."""
    if seed is None:
        return Forecaster(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Forecaster(config)


def _layer_state(state: State, layer: int) -> State:
    return tuple(tensor[layer] for tensor in state)


def _stack_layers(finals: list[State]) -> State:
    return tuple(torch.stack(parts) for parts in zip(*finals, strict=True))
