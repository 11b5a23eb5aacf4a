"""Where the forecaster runs: CUDA when there is one, the CPU otherwise.

Every code path works on the CPU; asking for CUDA on a machine without it is a configuration
mistake, so it stops start-up with a :class:`~vigil.models.config.ConfigError` naming
``VIGIL_DEVICE`` instead of silently running on the CPU at a fraction of the expected speed.
"""

from __future__ import annotations

from typing import Literal

import torch

from vigil.models.config import ConfigError

DevicePreference = Literal["auto", "cpu", "cuda"]


def select_device(preference: DevicePreference) -> torch.device:
    """The device for ``VIGIL_DEVICE``: ``auto`` picks CUDA when available, else the CPU."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "VIGIL_DEVICE: 'cuda' was requested but no CUDA device is available "
                "(set VIGIL_DEVICE=auto or VIGIL_DEVICE=cpu)"
            )
        return torch.device("cuda")
    if preference == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    raise ConfigError(f"VIGIL_DEVICE: expected 'auto', 'cpu' or 'cuda', got {preference!r}")
