"""The CUDA kernels' logic checked on the CPU: csrc/ops/cuda/inception_dwconv3d_kernel.cu and
instance_norm_act_kernel.cu compiled as C++ against a small CUDA execution model
(tests/cuda_emulation/cuda_emulation.h: a block's threads are CPU threads, __syncthreads a barrier,
shuffles exchanges between a warp's threads, shared memory NaN-filled before each block) and
compared with the float64 reference for the forward output, dx and every weight and bias gradient
(InceptionDWConv3d: the shared conformance table; InstanceNorm + LeakyReLU: the CPU backend's
table in every dtype, contiguous and channels-last, and the in-place op).

This verifies tiling, indexing, the synchronisation structure and the reductions of the very
source that nvcc compiles; it does not verify behaviour only a GPU shows (races, the memory model,
alignment faults, occupancy, speed): tests/ops/test_cuda_backend.py and bench/sanitize_cuda.py do that
on a GPU. Runs in its own process (the emulation library registers the fusionseg schemas, which
must not meet the package's extension in one process); the first run compiles it (~1.5 min).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="needs a C++20 compiler to build the emulated kernels")
def test_cuda_kernels_under_cpu_emulation_match_reference():
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "cuda_emulation" / "run_cases.py")],
                         capture_output=True, text=True, timeout=1500, cwd=ROOT)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines and lines[-1].get("summary"), out.stdout[-3000:] + out.stderr[-3000:]
    bad = [r for r in lines[:-1] if not r["ok"]]
    assert not bad, "cases that do not match the reference:\n" + "\n".join(json.dumps(r) for r in bad)
    assert lines[-1]["cases"] == len(lines) - 1 >= 10
    assert any(r["case"].startswith("norm ") for r in lines[:-1]), "the norm kernels were not checked"
    assert out.returncode == 0, out.stderr[-3000:]
