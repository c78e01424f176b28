"""The benchmark harness, shared by every benchmark: the environment record, atomic result files,
default output folders, the network's layer shapes, timing helpers and the CPU's cache and
copy-bandwidth figures.

Nothing here runs at import time beyond reading constants, so every script can answer ``--help``
without touching the device or the file system.
"""
from __future__ import annotations

import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Committed reference results: written only when a script is given --out explicitly.
RESULTS_DIR = ROOT / "bench" / "results"
# Where ordinary runs write (ignored by git).
LOCAL_RESULTS_DIR = RESULTS_DIR / "local"
REPORTS_DIR = ROOT / "reports"
ALLOCATOR_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX",
                  "THP_MEM_ALLOC_ENABLE", "LD_PRELOAD", "PYTORCH_CUDA_ALLOC_CONF",
                  "OMP_WAIT_POLICY", "OMP_PROC_BIND", "OMP_PLACES", "OMP_NUM_THREADS")
# glibc told to keep freed memory: fresh large allocations otherwise page-fault on every call and
# the fault cost, not the kernel, dominates CPU timings.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def reexec_keeping_freed_memory(module: str) -> None:
    """Re-runs `python -m module` with this process's arguments and glibc told to keep freed
    memory (KEEP_FREED_MEMORY), unless that is already so. The settings must be in the
    environment before the process starts; `-m` and the repository on PYTHONPATH keep the
    `bench` package importable whatever the working directory."""
    if all(os.environ.get(k) == v for k, v in KEEP_FREED_MEMORY.items()):
        return
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, **KEEP_FREED_MEMORY, PYTHONPATH=path)
    print(f"re-executing with {' '.join(f'{k}={v}' for k, v in KEEP_FREED_MEMORY.items())}", flush=True)
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)
# OpenMP told to keep idle threads spinning on their own core: on a small VM a sleeping second
# thread sometimes takes a scheduler tick (~8 ms) to wake for the next parallel region, which
# makes two-thread CPU timings bimodal. Measured with `python -m bench.thread_stability` (the
# settings compared there; this one gave the smallest spreads and no multi-millisecond outliers).
# Both sides of every comparison run under it.
STABLE_THREADS = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}
# The paper's eight whole-body CT sizes: 512 x 512 in-plane at ~0.8 mm, 2.5 mm slices (array
# order z, y, x), as FLARE's test cases.
PAPER_SLICES = (55, 100, 150, 215, 334, 448, 499, 554)
PAPER_SPACING = (2.5, 0.8, 0.8)


# ----------------------------------------------------------------------------- environment

def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def utc_stamp() -> str:
    return utc_now().strftime("%Y%m%dT%H%M%SZ")


def git_commit() -> dict:
    """{"commit": full hash or FUSIONSEG_COMMIT or "unknown", "dirty": bool | None}."""
    forced = os.environ.get("FUSIONSEG_COMMIT")
    if forced:
        return {"commit": forced, "dirty": None}
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": head or "unknown", "dirty": bool(status) if head else None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def last_level_cache_bytes() -> int | None:
    """Size of the largest CPU cache level (sysfs), in bytes; None where it cannot be read."""
    best_level, best_size = 0, None
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            text = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        m = re.fullmatch(r"(\d+)([KMG]?)", text)
        if not m:
            continue
        size = int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]
        if level > best_level:
            best_level, best_size = level, size
    return best_size


def nvml_driver() -> dict:
    """GPU driver and device names through NVML; {} where NVML cannot be initialised."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no GPU, no library
        return {}
    try:
        count = pynvml.nvmlDeviceGetCount()
        names = []
        for i in range(count):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else name)
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {"driver": driver.decode() if isinstance(driver, bytes) else driver, "nvml_devices": names}
    except Exception as err:  # noqa: BLE001
        return {"driver": f"unavailable: {err}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def command_line() -> str:
    """The command that produced a result, as it can be typed again from the repository root
    (``python -m bench.<module> ...`` for the benchmark modules)."""
    argv = list(sys.argv)
    if argv and argv[0]:
        try:
            rel = Path(argv[0]).resolve().relative_to(ROOT)
        except ValueError:
            rel = None
        if rel is not None and rel.parts[0] == "bench" and rel.suffix == ".py":
            return shlex.join(["python", "-m", ".".join(rel.with_suffix("").parts), *argv[1:]])
        if rel is not None:
            argv[0] = str(rel)
    return shlex.join(["python", *argv])


def allocator_settings() -> dict:
    return {k: os.environ[k] for k in ALLOCATOR_VARS if k in os.environ}


def environment(device: str = "cpu") -> dict:
    """What every result records: device, driver, versions, commit, threads, allocator settings,
    the command line and the load average."""
    import torch

    info = {
        "date_utc": utc_now().isoformat(timespec="seconds"),
        **git_commit(),
        "command": command_line(),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "threads": torch.get_num_threads(),
        "allocator_env": allocator_settings(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "last_level_cache_bytes": last_level_cache_bytes(),
        "loadavg": list(os.getloadavg()),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info.update({"driver": None, **nvml_driver()})
    if device == "cuda" and torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["device_kind"] = "cuda"
        major, minor = torch.cuda.get_device_capability()
        info["compute_capability"] = f"{major}.{minor}"
    else:
        info["device"] = f"CPU: {info['cpu']}"
        info["device_kind"] = "cpu"
    try:
        import fusionseg_kernels
        info["fusionseg_build"] = fusionseg_kernels.build_info()
    except Exception as err:  # noqa: BLE001 - the record must still be written
        info["fusionseg_build"] = f"unavailable: {err}"
    return info


def device_slug(env: dict) -> str:
    """A file-name-safe short name of the device: "cpu-amd-epyc", "nvidia-h200"."""
    name = env.get("device", "unknown")
    if name.startswith("CPU: "):
        name = "cpu " + name[5:]
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:48] or "unknown"


def quiet_profiler() -> None:
    """torch.profiler's kineto backend prints USDT start/stop lines, and on a machine without a GPU
    an error about the device count, on every profile; level 6 silences them. Set
    KINETO_LOG_LEVEL yourself to see them."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")


# ----------------------------------------------------------------------------- files

def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    from fusionseg_kernels import atomic  # imported here: importing the package loads torch

    (atomic.write_bytes if isinstance(data, bytes) else atomic.write_text)(path, data)


def write_json(path: Path, obj) -> None:
    from fusionseg_kernels import atomic

    atomic.write_json(path, obj)


def default_out(name: str, suffix: str = ".json") -> Path:
    """bench/results/local/<name>_<UTC time><suffix>: untracked, never a committed reference file."""
    return LOCAL_RESULTS_DIR / f"{name}_{utc_stamp()}{suffix}"


# ----------------------------------------------------------------------------- shapes

def network_layer_calls(network: str = "dual", batch: int = 1, scale: int = 1):
    """[(shape (N, C, D, H, W), gc, number of calls)] of the network's distinct InceptionDWConv3d
    calls at the released 96x128x128 patch, largest first, traced from the network itself;
    `scale` divides the spatial sizes (smoke runs)."""
    from fusionseg_kernels.models.complexity import distinct_inception_calls

    return distinct_inception_calls(network, batch=batch, scale=scale)


# ----------------------------------------------------------------------------- timing

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


def dram_copy_bandwidth(budget_s: float = 1.0, min_bytes: int = 256 << 20) -> dict:
    """Copy bandwidth (bytes read + written per second) of `dst.copy_(src)` on float32 buffers of
    at least 4x the last-level cache (and at least `min_bytes`) each, so that the copy streams from
    and to memory: the reference a memory-bound kernel on large tensors can be compared with."""
    import torch

    llc = last_level_cache_bytes() or (32 << 20)
    nbytes = max(min_bytes, 4 * llc)
    src = torch.empty(nbytes // 4, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), budget_s=budget_s)
    return {"buffer_bytes": nbytes, "copy_s": seconds, "bytes_per_s": 2 * nbytes / seconds,
            "last_level_cache_bytes": llc}


def cache_resident(working_set_bytes: int, llc_bytes: int | None) -> bool:
    """Whether a working set (what one call reads plus writes) fits the last-level cache, so that
    a warm repeat of the call runs from cache rather than from memory."""
    return llc_bytes is not None and working_set_bytes <= llc_bytes
