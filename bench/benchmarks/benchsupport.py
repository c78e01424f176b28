"""Constants and helpers shared by the benchmark modules (see conftest.py)."""
from __future__ import annotations

import os

import pytest
import torch


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SCALE = max(1, int(os.environ.get("FUSIONSEG_BENCH_SCALE", "1")))
ROUNDS = max(1, int(os.environ.get("FUSIONSEG_BENCH_ROUNDS", "5" if DEVICE == "cpu" else "30")))
FUSED = ("cpu",) if DEVICE == "cpu" else ("cuda", "triton")
BACKENDS = ("reference",) + FUSED
DTYPES = ("fp32",) if DEVICE == "cpu" else ("fp32", "bf16")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def require_backend(name: str) -> None:
    """Skips (with the reason) when a backend is not usable here: the benchmark ids stay the same on
    every machine, so stored runs can be compared."""
    if name == "reference":
        return
    from fusionseg_kernels.ops.inception_dwconv3d.dispatch import available_backends, can_run

    if name not in available_backends(DEVICE):
        pytest.skip(f"backend {name!r} unavailable: {can_run(name, DEVICE)[1]}")
