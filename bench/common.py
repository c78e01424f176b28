"""Shared by the benchmarks: environment record, atomic result files, the network's layer shapes."""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
LAYER_SHAPES = ROOT / "tests" / "data" / "idc_layer_shapes.json"
ALLOCATOR_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "THP_MEM_ALLOC_ENABLE")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: str = "cpu") -> dict:
    """What every result records: device, versions, commit, threads, allocator settings."""
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "allocator_env": {k: os.environ[k] for k in ALLOCATOR_VARS if k in os.environ},
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda" and torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = f"CPU: {info['cpu']}"
    try:
        import fusionseg_kernels
        info["fusionseg_build"] = fusionseg_kernels.build_info()
    except Exception as err:  # the record must still be written
        info["fusionseg_build"] = f"unavailable: {err}"
    return info


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def network_layer_calls(variant: str = "dual_branch", batch: int = 1):
    """The InceptionDWConv3d calls of the released network at a 96x128x128 patch, grouped:
    [(shape (N, C, D, H, W), gc, number of calls)], in first-seen order."""
    data = json.loads(LAYER_SHAPES.read_text())
    counts = Counter()
    order = []
    for layer in data[variant]:
        shape = tuple(layer["shape_ncdhw"])
        key = ((batch,) + shape[1:], layer["split"][1])
        if key not in counts:
            order.append(key)
        counts[key] += 1
    return [(shape, gc, counts[(shape, gc)]) for shape, gc in order]


def op_arguments(channels: int, gc: int, dtype=torch.float32, device="cpu", requires_grad=False,
                 band: int = 11, cube: int = 3, seed: int = 0):
    """The released configuration's weights and biases, in the op's argument order."""
    gen = torch.Generator().manual_seed(seed)
    args = []
    for k in ((cube, cube, cube), (1, 1, band), (1, band, 1), (band, 1, 1)):
        w = torch.randn(gc, 1, *k, generator=gen) / math.sqrt(math.prod(k))
        b = torch.randn(gc, generator=gen) * 0.1
        args += [w.to(device, dtype).requires_grad_(requires_grad),
                 b.to(device, dtype).requires_grad_(requires_grad)]
    return args


def median_time(fn, min_repeats: int = 3, max_repeats: int = 15, budget_s: float = 1.0) -> float:
    """Median wall time of fn() in seconds, after one warm-up call; repeats fit the budget."""
    fn()
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    repeats = int(min(max_repeats, max(min_repeats, budget_s / max(first, 1e-9))))
    times = [first]
    for _ in range(repeats - 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def geomean(values, weights=None) -> float:
    weights = weights or [1] * len(values)
    return math.exp(sum(w * math.log(v) for v, w in zip(values, weights)) / sum(weights))
