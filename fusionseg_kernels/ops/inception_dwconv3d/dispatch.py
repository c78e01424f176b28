"""Backend choice for inception_dwconv3d: one `can_run` predicate per backend and one preference
order per device type, used both to choose ("auto") and to explain.

"auto": CPU tensors -> "cpu" (else "reference"); CUDA tensors -> the backend the recorded GPU
table (gpu_table.json, written by bench/gpu_check.sh from measured results) prefers for this
GPU, dtype and size class, then "triton", "cuda", "reference" in that order. The choice is made
and cached (and logged at DEBUG level) outside traced code: under torch.compile the same pure
lookup runs with no side effects.
"""
from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

import torch

from ..._extension import extension_status, has_cuda_kernels
from ... import config
from ..._imports import when_imported
from ...errors import BackendUnavailableError

log = logging.getLogger("fusionseg_kernels.dispatch")

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
GPU_TABLE_PATH = Path(__file__).with_name("gpu_table.json")
# "auto" tries these in order (after the GPU table's choice on CUDA tensors).
PREFERENCE = {
    "cpu": ("cpu", "reference"),
    "cuda": ("triton", "cuda", "reference"),
    "meta": ("cpu", "reference"),  # the C++ op's meta kernel gives shapes and FLOP counts
}
_CHOICES: dict = {}


def check_backend_name(name) -> str:
    """Returns `name` if it is one of BACKENDS; raises ValueError naming the choices otherwise.
    The one check of backend names (the op, the module and the networks all use it)."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


# ------------------------------------------------------------------------------ GPU table

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
        return {(str(e["device_name"]), dtype_name(e["dtype"]), e["size_class"]): e["backend"]
                for e in entries}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


# ------------------------------------------------------------------------------ can_run

def triton_status() -> tuple[bool, str]:
    """(usable, why not) for the Triton backend on this machine (import and version checks)."""
    try:
        from . import triton_impl
    except ImportError as err:
        return False, f"the triton backend is not available ({err})"
    return triton_impl.available()


def can_run(backend: str, device_type: str) -> tuple[bool, str]:
    """(True, why it fits) or (False, why not): whether `backend` can run on tensors of
    `device_type` ("cpu", "cuda", "meta", ...) on this machine. Cheap: what it reads (the
    extension's load status, its CUDA archs, triton's import) is cached where it is computed."""
    check_backend_name(backend)
    if backend == "reference":
        return True, "the PyTorch reference runs everywhere"
    if backend == "cpu":
        ok, why = extension_status()
        if not ok:
            return False, why
        if device_type not in ("cpu", "meta"):
            return False, f"backend 'cpu' needs CPU tensors, got a tensor on {device_type}"
        return True, ("CPU tensor and the fused CPU kernel is built" if device_type == "cpu" else
                      "meta tensors: the fused op's meta kernel (shapes, FLOP counts)")
    if backend == "cuda":
        ok, why = extension_status()
        if not ok:
            return False, why
        if not has_cuda_kernels():
            return False, ("backend 'cuda' is not built: this fusionseg extension was compiled without a "
                           "CUDA toolkit; install one (nvcc) and rebuild with "
                           "`pip install --no-build-isolation -e .`")
        if device_type not in ("cuda", "meta"):
            return False, f"backend 'cuda' needs CUDA tensors, got a tensor on {device_type}"
        return True, "the CUDA kernels are built"
    if backend == "triton":
        ok, why = triton_status()
        if not ok:
            return False, why
        if device_type in ("cuda", "meta") or (device_type == "cpu" and config.triton_interpret()):
            return True, "the triton backend is available"
        return False, ("the triton backend runs on CUDA tensors (or on CPU tensors with "
                       "TRITON_INTERPRET=1), got a tensor on " + device_type)
    raise AssertionError(backend)  # "auto" is resolved by _choose


def available_backends(device_type: str, fused_only: bool = False) -> list[str]:
    """The backends that can run on tensors of `device_type` ("cpu", "cuda") on this machine,
    "reference" first (left out with `fused_only`), then the fused ones in the preference order
    of "auto". The one answer to "what can I benchmark or test here"."""
    names = [] if fused_only else ["reference"]
    for backend in ("cpu", "triton", "cuda"):
        if device_type == "cpu" and backend == "triton":
            continue  # the interpreter runs Triton kernels on CPU tensors, but only for tests
        if can_run(backend, device_type)[0]:
            names.append(backend)
    return names


def check_backend(backend: str, x: torch.Tensor) -> None:
    """Raises ValueError for an unknown name, BackendUnavailableError if `backend` cannot run on x."""
    if backend == "auto":
        return
    ok, why = can_run(backend, _device_type(x))
    if not ok:
        raise BackendUnavailableError(why)


def _device_type(x) -> str:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"inception_dwconv3d expects a tensor input, got {type(x).__name__}")
    return x.device.type


# ------------------------------------------------------------------------------ auto

def _choose(device_type: str, device_index, dtype: torch.dtype, cls: str) -> tuple[str, str]:
    if device_type == "cuda":
        name = torch.cuda.get_device_name(device_index)
        dt = dtype_name(dtype)
        recorded = _gpu_table().get((name, dt, cls))
        if recorded is not None and recorded != "auto" and recorded in BACKENDS:
            ok, why = can_run(recorded, device_type)
            if ok:
                return recorded, f"recorded as fastest for {name}, {dt}, {cls} inputs"
            log.debug("gpu_table prefers %s for %s, but it cannot run: %s", recorded, name, why)
    reasons = []
    for backend in PREFERENCE.get(device_type, ("reference",)):
        ok, why = can_run(backend, device_type)
        if ok:
            if backend == "reference" and reasons:
                return backend, "; ".join(reasons)
            if device_type == "cuda" and backend == "triton":
                why = f"no measured record for this GPU, {dtype_name(dtype)}, {cls}: triton by default"
            return backend, why
        reasons.append(why)
    return "reference", f"no fused backend for {device_type} tensors"


def explain_backend(x: torch.Tensor) -> tuple[str, str]:
    """(backend, reason) that backend="auto" picks for tensors like x."""
    device_type = _device_type(x)
    return _choose(device_type, x.device.index, x.dtype, size_class(x))


def _assume_constant_result_when_compiling(*fns) -> None:
    """Marks `fns` with torch.compiler.assume_constant_result: under torch.compile they run eagerly
    and their results become constants of the graph (no file access, logging or cache writes
    inside traced code). The mark imports torch._dynamo, 1.2 s of start-up that an eager process
    (``fusionseg predict``) never needs, so it is applied when torch._dynamo is imported, which
    torch.compile does before it traces anything."""
    def mark():
        for fn in fns:
            torch.compiler.assume_constant_result(fn)
    when_imported("torch._dynamo", mark)


def _auto_backend(device_type: str, device_index, dtype: torch.dtype, cls: str) -> str:
    key = (device_type, device_index, dtype, cls)
    if key not in _CHOICES:
        _CHOICES[key] = _choose(*key)
        log.debug("inception_dwconv3d backend for %s: %s (%s)", key, *_CHOICES[key])
    return _CHOICES[key][0]


def _explicit_backend(backend: str, device_type: str) -> str:
    ok, why = can_run(backend, device_type)
    if not ok:
        raise BackendUnavailableError(why)
    return backend


_assume_constant_result_when_compiling(_auto_backend, _explicit_backend)


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """The backend to run for x: `backend` itself (checked) or the "auto" choice (cached)."""
    check_backend_name(backend)
    if backend != "auto":
        return _explicit_backend(backend, x.device.type)
    return _auto_backend(x.device.type, x.device.index, x.dtype, size_class(x))


def clear_backend_cache() -> None:
    """Forgets cached choices (after rebuilding, or editing gpu_table.json)."""
    _CHOICES.clear()
    _gpu_table.cache_clear()
