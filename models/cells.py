"""Recurrent cells behind one interface: standard LSTM, peephole LSTM and GRU.

A cell is one layer, one timestep: ``forward(x_t, state) -> (h_t, new_state)``. The stateful mode of
the forecaster calls it once per event, so an event costs one step whatever the window length.
The window mode calls :meth:`RecurrentCell.sequence` for a whole window at once; the standard LSTM
and GRU hand the sequence to ``torch.lstm`` / ``torch.gru`` (the cuDNN / oneDNN kernels behind
``nn.LSTM`` / ``nn.GRU``) with the cell's OWN parameters, so both modes share weights and give the
same numbers from a zero state.

Parameters follow ``nn.LSTM`` / ``nn.GRU`` layout (``weight_ih`` ``[G*H, F]``, ``weight_hh``
``[G*H, H]``, ``bias_ih`` and ``bias_hh`` ``[G*H]``; gate order i, f, g, o for the LSTMs and r, z, n
for the GRU) so weights can be compared with, or loaded from, the torch modules.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional

State = tuple[Tensor, ...]
"""A recurrent state: ``(h, c)`` for the LSTMs, ``(h,)`` for the GRU; each ``[B, H]`` per layer."""


class RecurrentCell(nn.Module, ABC):
    """One recurrent layer stepped one timestep at a time."""

    kind: ClassVar[str]
    gates: ClassVar[int]
    """Gate blocks stacked in ``weight_ih`` / ``weight_hh`` (4 for the LSTMs, 3 for the GRU)."""
    state_arity: ClassVar[int]
    """Tensors in the state: 2 for ``(h, c)``, 1 for ``(h,)``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"sizes must be positive, got {input_size=} {hidden_size=}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        width = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(width, input_size))
        self.weight_hh = nn.Parameter(torch.empty(width, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(width))
        self.bias_hh = nn.Parameter(torch.empty(width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The torch RNN initialisation: uniform in ±1/sqrt(hidden_size)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """The zero state for ``batch`` sequences."""
        device = self.weight_hh.device if device is None else device
        shape = (batch, self.hidden_size)
        dtype = self.weight_hh.dtype
        return tuple(
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(self.state_arity)
        )

    @abstractmethod
    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One timestep: ``x_t [B, F_in]`` → ``(h_t [B, H], new_state)``."""

    def sequence(self, xs: Tensor, state: State) -> tuple[Tensor, State]:
        """All timesteps of ``xs [B, T, F_in]`` → ``(outputs [B, T, H], final_state)``.

        The generic version loops :meth:`forward`; cells with a fused kernel override it.
        """
        outputs = []
        for t in range(xs.shape[1]):
            h, state = self(xs[:, t], state)
            outputs.append(h)
        return torch.stack(outputs, dim=1), state

    def flops_per_step(self, batch: int) -> int:
        """Matrix-multiply and bias FLOPs of one timestep (activations are not counted)."""
        width = self.gates * self.hidden_size
        return 2 * batch * width * (self.input_size + self.hidden_size) + 2 * batch * width


class LSTMCell(RecurrentCell):
    """The standard LSTM (Hochreiter & Schmidhuber; torch's formulation)."""

    kind = "lstm"
    gates = 4
    state_arity = 2

    def reset_parameters(self) -> None:
        super().reset_parameters()
        _open_forget_gate(self.bias_ih, self.hidden_size)

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = torch.lstm_cell(
            x_t, (state[0], state[1]), self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        )
        return h, (h, c)

    def sequence(self, xs: Tensor, state: State) -> tuple[Tensor, State]:
        hx = (state[0].unsqueeze(0), state[1].unsqueeze(0))
        params = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        outputs, h, c = torch.lstm(xs, hx, params, True, 1, 0.0, self.training, False, True)
        return outputs, (h[0], c[0])


class GRUCell(RecurrentCell):
    """The gated recurrent unit (Cho et al.; torch's formulation, reset gate inside ``n``)."""

    kind = "gru"
    gates = 3
    state_arity = 1

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        h = torch.gru_cell(
            x_t, state[0], self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        )
        return h, (h,)

    def sequence(self, xs: Tensor, state: State) -> tuple[Tensor, State]:
        params = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        hx = state[0].unsqueeze(0)
        outputs, h = torch.gru(xs, hx, params, True, 1, 0.0, self.training, False, True)
        return outputs, (h[0],)


class PeepholeLSTMCell(RecurrentCell):
    """LSTM whose gates also look at the cell state (Gers & Schmidhuber), diagonal peepholes.

    ``i = sigmoid(W_i·x + U_i·h + p_i⊙c(t-1) + b_i)``,
    ``f = sigmoid(W_f·x + U_f·h + p_f⊙c(t-1) + b_f)``,
    ``g = tanh(W_g·x + U_g·h + b_g)``, ``c(t) = f⊙c(t-1) + i⊙g``,
    ``o = sigmoid(W_o·x + U_o·h + p_o⊙c(t) + b_o)``, ``h(t) = o⊙tanh(c(t))``.
    The peepholes let the gates time events by the cell's own count rather than by the input,
    which helps on periodic sensor data. ``weight_peephole`` rows are ``p_i, p_f, p_o``.
    """

    kind = "peephole"
    gates = 4
    state_arity = 2

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.weight_peephole = nn.Parameter(torch.empty(3, hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        _open_forget_gate(self.bias_ih, self.hidden_size)

    def project(self, xs: Tensor) -> Tensor:
        """The input half of every gate, for one step ``[B, F]`` or a window ``[B, T, F]``.

        Both biases are folded in here, so a window pays one large matmul for all T timesteps
        and each step only adds the recurrent part.
        """
        return functional.linear(xs, self.weight_ih, self.bias_ih + self.bias_hh)

    def recur(self, projected_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One step given the precomputed input projection ``[B, 4H]``."""
        h, c = state
        gates = torch.addmm(projected_t, h, self.weight_hh.t())
        i, f, g, o = gates.chunk(4, dim=1)
        peep_i, peep_f, peep_o = self.weight_peephole
        i = torch.sigmoid(torch.addcmul(i, peep_i, c))
        f = torch.sigmoid(torch.addcmul(f, peep_f, c))
        c = torch.addcmul(f * c, i, torch.tanh(g))
        o = torch.sigmoid(torch.addcmul(o, peep_o, c))
        h = o * torch.tanh(c)
        return h, (h, c)

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        return self.recur(self.project(x_t), state)

    def sequence(self, xs: Tensor, state: State) -> tuple[Tensor, State]:
        projected = self.project(xs)
        outputs = []
        for t in range(xs.shape[1]):
            h, state = self.recur(projected[:, t], state)
            outputs.append(h)
        return torch.stack(outputs, dim=1), state

    def flops_per_step(self, batch: int) -> int:
        return super().flops_per_step(batch) + 2 * batch * 3 * self.hidden_size


CELLS: dict[str, type[RecurrentCell]] = {
    LSTMCell.kind: LSTMCell,
    PeepholeLSTMCell.kind: PeepholeLSTMCell,
    GRUCell.kind: GRUCell,
}


def _open_forget_gate(bias: Tensor, hidden_size: int) -> None:
    """Start with the forget gate biased open (+1) so gradients survive long windows early on."""
    with torch.no_grad():
        bias[hidden_size : 2 * hidden_size].add_(1.0)
