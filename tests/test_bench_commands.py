"""`vigil bench inference` (the device choice reaches every measured path) and `key-memory`."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from vigil.bench.cli import app
from vigil.bench.inference import run_inference_bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: cuda is valid")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    result = CliRunner().invoke(app, ["inference", "--device", "cuda"])
    assert result.exit_code == 2
    assert "no CUDA device is available" in result.output


def test_an_unknown_device_is_refused() -> None:
    result = CliRunner().invoke(app, ["inference", "--device", "gpu"])
    assert result.exit_code == 2
    assert "--device" in result.output


def test_auto_runs_on_the_device_the_worker_would_pick() -> None:
    result = run_inference_bench(batch=8, seconds=0.002, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert result.device.startswith(expected)
    assert result.flops_per_window > 0
    assert result.batched_windows_per_s > 0 and result.gemm_gflops > 0
    assert set(result.stateful_events_per_s) == {32, 256}
    assert json.loads(json.dumps(result.to_json()))["device"] == result.device


def test_key_memory_counts_what_keys_hold() -> None:
    from vigil.bench.key_memory import measure_key_memory

    few = measure_key_memory(keys=3, events_per_key=80)
    # a window of 64 float rows per key is held at the very least; the saved state is JSON
    assert few.bytes_in_memory_per_key > 64 * 8
    assert few.state_json_bytes_per_key > 64 * 8
    assert few.model_parameters > 0 and few.model_bytes == 4 * few.model_parameters
