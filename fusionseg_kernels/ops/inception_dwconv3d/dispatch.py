"""Backend choice for inception_dwconv3d: explicit names checked, "auto" resolved and cached.

"auto" (SPEC §2): CPU tensors -> "cpu" (else "reference"); CUDA tensors -> the backend the
recorded GPU table (gpu_table.json, written by bench/gpu_check.sh from measured results)
prefers for this GPU, dtype and size class; "triton" with no record; "reference" when nothing
else is built. The choice is made and cached (and logged at DEBUG level) outside traced code:
under torch.compile the same pure lookup runs with no side effects.
"""
from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from pathlib import Path

import torch

from ..._extension import extension_available, has_cuda_kernels, require_extension

log = logging.getLogger("fusionseg_kernels.dispatch")

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
GPU_TABLE_PATH = Path(__file__).with_name("gpu_table.json")
_CHOICES: dict = {}


class BackendUnavailableError(RuntimeError):
    """The requested backend is not built or cannot run on these tensors."""


_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
                torch.bfloat16: "bfloat16"}
_DTYPE_ALIASES = {"fp32": "float32", "fp64": "float64", "fp16": "float16", "half": "float16",
                  "bf16": "bfloat16"}


def dtype_name(dtype) -> str:
    """The canonical dtype name of the GPU table ("float32", "bfloat16", ...) for a torch.dtype
    or a name ("bf16", "torch.bfloat16", "bfloat16")."""
    if isinstance(dtype, torch.dtype):
        return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))
    name = str(dtype).replace("torch.", "")
    return _DTYPE_ALIASES.get(name, name)


def size_class_of_bytes(nbytes: int) -> str:
    """Coarse size bucket used as the GPU table's shape key: small < 4 MB <= medium < 32 MB <= large."""
    if nbytes < (4 << 20):
        return "small"
    if nbytes < (32 << 20):
        return "medium"
    return "large"


def size_class(x: torch.Tensor) -> str:
    """Size bucket of x (see `size_class_of_bytes`)."""
    return size_class_of_bytes(x.numel() * x.element_size())


def gpu_table_key(device_name: str, dtype, nbytes: int) -> tuple[str, str, str]:
    """(device name, dtype name, size class): the key under which gpu_table.json records the
    fastest backend. The one function both the writer (bench/bench_gpu_kernels.py) and the
    reader (`auto`) use, so their keys cannot drift apart."""
    return (str(device_name), dtype_name(dtype), size_class_of_bytes(int(nbytes)))


@lru_cache(maxsize=None)
def _gpu_table() -> dict:
    """{gpu_table_key: backend} from gpu_table.json (empty when the file is missing or unreadable)."""
    try:
        entries = json.loads(GPU_TABLE_PATH.read_text()).get("entries", [])
        return {gpu_table_key(e["device_name"], e["dtype"], 0)[:2] + (e["size_class"],): e["backend"]
                for e in entries}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def triton_status() -> tuple[bool, str]:
    """(usable, why not) for the Triton backend on this machine."""
    try:
        from . import triton_impl
    except ImportError as err:
        return False, f"the triton backend is not available ({err})"
    return triton_impl.available()


def _triton_usable_on(device_type: str) -> tuple[bool, str]:
    ok, why = triton_status()
    if not ok:
        return False, why
    if device_type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return True, ""
    return False, ("the triton backend runs on CUDA tensors (or on CPU tensors with "
                   "TRITON_INTERPRET=1), got a tensor on " + device_type)


def _check_backend(backend: str, device_type: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "cpu":
        require_extension()
        if device_type not in ("cpu", "meta"):
            raise BackendUnavailableError(f"backend 'cpu' needs CPU tensors, got a tensor on {device_type}")
    elif backend == "cuda":
        require_extension()
        if not has_cuda_kernels():
            raise BackendUnavailableError(
                "backend 'cuda' is not built: this fusionseg extension was compiled without a CUDA "
                "toolkit; install one (nvcc) and rebuild with `pip install --no-build-isolation -e .`")
        if device_type not in ("cuda", "meta"):
            raise BackendUnavailableError(f"backend 'cuda' needs CUDA tensors, got a tensor on {device_type}")
    elif backend == "triton":
        ok, why = _triton_usable_on(device_type)
        if not ok:
            raise BackendUnavailableError(why)


def check_backend(backend: str, x: torch.Tensor) -> None:
    """Raises a clear error if `backend` cannot run on x."""
    _check_backend(backend, x.device.type)


def _choose(device_type: str, device_index, dtype: torch.dtype, cls: str) -> tuple[str, str]:
    if device_type == "cpu":
        if extension_available():
            return "cpu", "CPU tensor and the fused CPU kernel is built"
        return "reference", "CPU tensor but the C++ extension is not built"
    if device_type == "cuda":
        name = torch.cuda.get_device_name(device_index)
        dt = dtype_name(dtype)
        backend = _gpu_table().get((name, dt, cls))
        if backend is not None:
            try:
                _check_backend(backend, device_type)
                return backend, f"recorded as fastest for {name}, {dt}, {cls} inputs"
            except (BackendUnavailableError, RuntimeError):
                pass
        if _triton_usable_on(device_type)[0]:
            return "triton", f"no measured record for {name}, {dt}, {cls}: triton by default"
        if extension_available() and has_cuda_kernels():
            return "cuda", "triton is not available; the CUDA kernels are built"
        return "reference", "neither triton nor the CUDA kernels are available"
    if device_type == "meta" and extension_available():
        return "cpu", "meta tensors: the fused op's meta kernel (shapes, FLOP counts)"
    return "reference", f"no fused backend for {device_type} tensors"


def explain_backend(x: torch.Tensor) -> tuple[str, str]:
    """(backend, reason) that backend="auto" picks for tensors like x."""
    return _choose(x.device.type, x.device.index, x.dtype, size_class(x))


# Both run eagerly when torch.compile traces the caller, and their results become constants of
# the graph: no file access, logging or cache writes inside traced code.
@torch.compiler.assume_constant_result
def _auto_backend(device_type: str, device_index, dtype: torch.dtype, cls: str) -> str:
    key = (device_type, device_index, dtype, cls)
    if key not in _CHOICES:
        _CHOICES[key] = _choose(*key)
        log.debug("inception_dwconv3d backend for %s: %s (%s)", key, *_CHOICES[key])
    return _CHOICES[key][0]


@torch.compiler.assume_constant_result
def _explicit_backend(backend: str, device_type: str) -> str:
    _check_backend(backend, device_type)
    return backend


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """The backend to run for x: `backend` itself (checked) or the "auto" choice (cached)."""
    if backend != "auto":
        return _explicit_backend(backend, x.device.type)
    return _auto_backend(x.device.type, x.device.index, x.dtype, size_class(x))


def clear_backend_cache() -> None:
    _CHOICES.clear()
    _gpu_table.cache_clear()
