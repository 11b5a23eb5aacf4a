"""The live model on its device: synchronous, thread-safe inference and atomic hot swaps.

:class:`InferenceEngine` runs on the CALLER's thread (the batch scheduler's worker thread, never the
event loop). It keeps ``(model, version)`` as one tuple and replaces that tuple in a single
assignment, so a forward pass that has started finishes on the model it started with while the
next one sees the new model — no lock on the hot path, and no half-swapped state to observe.

On CUDA, inputs go through pinned host memory with ``non_blocking`` copies so the transfer
overlaps the kernel launches; results come back through a pinned buffer too. On the CPU those
steps are skipped.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections.abc import Sequence

import numpy as np
import torch

from vigil.models.cells import State
from vigil.models.forecaster import Forecaster, input_layouts


class InferenceEngine:
    """Owns a private copy of the live forecaster on ``device``: predict, step, swap."""

    def __init__(self, model: Forecaster, device: torch.device, version: str | None = None) -> None:
        self.device = device
        self._swap_lock = threading.Lock()
        adopted = self._adopt(model)
        self._live: tuple[Forecaster, str] = (adopted, version or weights_digest(adopted))

    # ---- the live model ------------------------------------------------------------------
    @property
    def model(self) -> Forecaster:
        return self._live[0]

    @property
    def version(self) -> str:
        return self._live[1]

    def swap(self, new_model: Forecaster, version: str | None = None) -> str:
        """Make ``new_model`` live (a private copy of it); returns the version it replaced.

        ``version`` defaults to a digest of the weights. The new model must take and give the
        same shapes, so windows already queued stay valid.
        """
        adopted = self._adopt(new_model)
        version = version or weights_digest(adopted)
        with self._swap_lock:
            old_model, old_version = self._live
            if (adopted.config.input_size, adopted.config.horizon) != (
                old_model.config.input_size,
                old_model.config.horizon,
            ):
                raise ValueError(
                    "a swapped-in model must keep input_size and horizon "
                    f"({old_model.config.input_size}, {old_model.config.horizon}); got "
                    f"({adopted.config.input_size}, {adopted.config.horizon})"
                )
            self._live = (adopted, version)
        return old_version

    def _adopt(self, model: Forecaster) -> Forecaster:
        # A copy, so a trainer that keeps updating its model in place never touches live weights.
        private = copy.deepcopy(model).to(self.device).eval()
        for parameter in private.parameters():
            parameter.requires_grad_(False)
        return private

    # ---- window mode ---------------------------------------------------------------------
    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Normalised windows ``[B, T, F]`` → forecasts ``[B, H, F]`` (float32)."""
        return self.predict_versioned(windows)[0]

    def predict_versioned(self, windows: np.ndarray) -> tuple[np.ndarray, str]:
        """As :meth:`predict`, plus the version of the model that actually ran."""
        model, version = self._live
        batch = _as_float32(windows, 3, _widths(model), "windows")
        with torch.inference_mode():
            output = model(self._to_device(batch))
            return self._to_host(output), version

    # ---- stateful mode -------------------------------------------------------------------
    def initial_state(self, batch: int) -> State:
        return self.model.initial_state(batch, self.device)

    def step(self, x: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """One event for each of B keys: ``x [B, F]`` and their stacked state → forecasts, state."""
        model = self._live[0]
        batch = _as_float32(x, 2, _widths(model), "x")
        with torch.inference_mode():
            output, new_state = model.step(self._to_device(batch), state)
            return self._to_host(output), new_state

    def step_keys(
        self,
        x: np.ndarray,
        states: Sequence[tuple[bytes, str] | None],
        windows: np.ndarray,
    ) -> tuple[np.ndarray, list[bytes], str]:
        """The stream's stateful path: one event for each of B keys, on one model snapshot.

        ``states[i]`` is a key's stored state and the version that produced it. A key with no
        state, or one from another model version (a hot swap happened), is warmed instead: its
        window ``windows[i]`` ``[T, F]`` (ending with ``x[i]``) is unrolled from zero, which gives
        exactly the state and forecast stateful mode would have reached. Returns forecasts
        ``[B, H, F]``, the new per-key states and the version that ran.
        """
        model, version = self._live
        batch = _as_float32(x, 2, _widths(model), "x")
        out = np.empty((len(batch), model.config.horizon, model.config.input_size), np.float32)
        new_states: list[bytes] = [b""] * len(batch)
        stepped = [i for i, s in enumerate(states) if s is not None and s[1] == version]
        valid = set(stepped)
        warmed = [i for i in range(len(batch)) if i not in valid]
        with torch.inference_mode():
            if stepped:
                stored = model.states_from_bytes(
                    [states[i][0] for i in stepped],  # type: ignore[index]
                    self.device,
                    reset_mismatched=True,
                )
                forecast, state = model.step(self._to_device(batch[stepped]), stored)
                out[stepped] = self._to_host(forecast)
                for i, blob in zip(stepped, model.states_to_bytes(state), strict=True):
                    new_states[i] = blob
            if warmed:
                rows = _as_float32(windows[warmed], 3, _widths(model), "windows")
                forecast, state = model.unroll(self._to_device(rows), None)
                out[warmed] = self._to_host(forecast)
                for i, blob in zip(warmed, model.states_to_bytes(state), strict=True):
                    new_states[i] = blob
        return out, new_states, version

    def states_from_bytes(
        self, items: Sequence[bytes | None], *, reset_mismatched: bool = True
    ) -> State:
        """Stored per-key states (None = new key) → one batched state on the device.

        By default a state written by a model of another shape (before a swap that changed
        the hidden size, say) restarts from zero instead of failing the whole batch.
        """
        return self.model.states_from_bytes(items, self.device, reset_mismatched=reset_mismatched)

    def states_to_bytes(self, state: State) -> list[bytes]:
        """A batched state → one bytes value per key, for Redis."""
        return self.model.states_to_bytes(state)

    # ---- transfers -----------------------------------------------------------------------
    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _to_host(self, tensor: torch.Tensor) -> np.ndarray:
        if self.device.type == "cuda":
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
            return host.numpy()
        return tensor.numpy()


def weights_digest(model: torch.nn.Module) -> str:
    """A short content hash of the weights: the same weights always get the same version."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def _widths(model: Forecaster) -> tuple[int, ...]:
    """Row widths a model takes: its values, with or without calendar and seasonal-lag columns."""
    return tuple(input_layouts(model.config))


def _as_float32(
    array: np.ndarray, ndim: int, channels: int | tuple[int, ...], name: str
) -> np.ndarray:
    """Contiguous float32 of the expected rank and width, or a clear error; never NaN inside."""
    result = np.ascontiguousarray(array, dtype=np.float32)
    widths = (channels,) if isinstance(channels, int) else channels
    if result.ndim != ndim or result.shape[-1] not in widths:
        shape = "[B, T, F]" if ndim == 3 else "[B, F]"
        allowed = " or ".join(map(str, widths))
        raise ValueError(f"{name} must be {shape} with F={allowed}, got {result.shape}")
    if not np.isfinite(result).all():
        raise ValueError(f"{name} contain NaN or infinity; gap-fill before inference")
    return result
