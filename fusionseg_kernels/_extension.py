"""Loads the C++/CUDA operator library (built by setup.py through CMake) into torch.ops."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from . import config
from .errors import ExtensionNotBuiltError

_PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` from the repository root "
    "(or `make test`, which does that in .venv/)"
)


@functools.lru_cache(maxsize=None)
def _load() -> tuple[bool, str]:
    if config.extension_disabled():
        # e.g. a process that loads another build of the fusionseg schemas (the CUDA emulation)
        return False, "the fusionseg C++ extension is switched off (FUSIONSEG_NO_EXTENSION=1)"
    candidates = sorted(_PACKAGE_DIR.glob("_C*.so")) + sorted(_PACKAGE_DIR.glob("_C*.pyd"))
    if not candidates:
        return False, f"the fusionseg C++ extension is not built ({_PACKAGE_DIR}/_C*.so missing): {BUILD_HINT}"
    try:
        torch.ops.load_library(str(candidates[0]))
    except OSError as err:  # e.g. built against another torch
        return False, f"the fusionseg C++ extension failed to load ({err}); rebuild it: {BUILD_HINT}"
    return True, ""


def extension_status() -> tuple[bool, str]:
    """(True, "") when the C++ operator library is loaded, else (False, how to build it)."""
    return _load()


def extension_available() -> bool:
    return _load()[0]


def require_extension() -> None:
    ok, why = _load()
    if not ok:
        raise ExtensionNotBuiltError(why)


def build_info() -> dict:
    """What the C++ extension was built with.

    Keys: ``torch_version`` (headers it was compiled against), ``openmp``, ``compiler``,
    ``cxx_flags``, ``cuda`` (None for a CPU-only build, else a dict with ``version`` and
    ``archs``), ``cuda_archs`` (list, empty when CPU-only), ``runtime_torch`` and
    ``extension_path``.
    """
    require_extension()
    info = json.loads(torch.ops.fusionseg.build_info())
    cuda = info.get("cuda")
    info["cuda_archs"] = list(cuda.get("archs", [])) if cuda else []
    info["cuda_version"] = cuda.get("version") if cuda else None
    info["runtime_torch"] = torch.__version__
    info["extension_path"] = str(next(iter(sorted(_PACKAGE_DIR.glob("_C*.so"))), ""))
    return info


@functools.lru_cache(maxsize=None)
def has_cuda_kernels() -> bool:
    """Whether the loaded library contains CUDA kernels (cached: the build cannot change in a process)."""
    return extension_available() and bool(build_info()["cuda_archs"])
