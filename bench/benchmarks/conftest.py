"""pytest-benchmark suite (trends over commits): the op on the network's largest calls and the
network's inference and training steps, per available backend. Not part of `pytest tests`.

    pytest bench/benchmarks --benchmark-only --benchmark-json=reports/benchmark.json
    pytest bench/benchmarks --benchmark-only --benchmark-autosave            # store a baseline
    pytest bench/benchmarks --benchmark-only --benchmark-compare --benchmark-compare-fail=min:10%

Environment: FUSIONSEG_BENCH_ROUNDS (timed rounds per benchmark; default 5 on the CPU, 30 on a GPU),
FUSIONSEG_BENCH_SCALE (divide the spatial sizes by this; default 1, for smoke runs).
"""
from __future__ import annotations

import os

import pytest
import torch

from benchsupport import DEVICE, ROUNDS, SCALE

from bench import harness as common
from bench.machine import MachineMonitor

# The machine's state over the whole session (bench/compare.py judges a comparison by it).
_MONITOR = MachineMonitor("pytest-benchmark suite", gpu=DEVICE == "cuda")


def pytest_sessionstart(session):
    _MONITOR.__enter__()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    # before pytest-benchmark's own sessionfinish, which writes the JSON with the machine info
    if not _MONITOR.record:
        _MONITOR.__exit__(None, None, None)


def pytest_benchmark_update_machine_info(config, machine_info):
    env = common.environment(DEVICE)
    machine_info["fusionseg"] = {k: env.get(k) for k in (
        "device", "driver", "torch", "triton", "cuda", "commit", "dirty", "threads", "allocator_env", "command",
        "cpu", "compute_capability")}
    machine_info["fusionseg"]["rounds"] = ROUNDS
    machine_info["fusionseg"]["scale"] = SCALE
    machine_info["fusionseg"]["machine"] = _MONITOR.record or None


@pytest.fixture(autouse=True, scope="session")
def _threads():
    if DEVICE == "cpu":
        torch.set_num_threads(int(os.environ.get("FUSIONSEG_BENCH_THREADS", "2")))
    if DEVICE == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
