"""Telling glibc to keep freed memory (CPU inference).

Inference allocates and frees the same large tensors for every tile. With glibc's defaults each
large allocation is a fresh ``mmap`` whose pages fault in again on first touch, which can double
the time of a CPU forward pass. Raising the mmap and trim thresholds makes glibc reuse freed
memory instead — the same as starting the process with ``MALLOC_MMAP_THRESHOLD_=4294967296
MALLOC_TRIM_THRESHOLD_=68719476736``. ``mallopt`` takes an int, so the largest settable
threshold is 2 GiB - 1.
"""
from __future__ import annotations

import ctypes
import ctypes.util

from fusionseg_kernels import config

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_state = {"setting": None}


def keep_freed_memory(enable: bool = True) -> str:
    """Applies the setting once per process and returns what is in effect:
    "environment" (the variables are set, nothing is changed), "mallopt" (set here),
    "glibc default" (disabled, or not glibc)."""
    if _state["setting"] is not None:
        return _state["setting"]
    given = {v: config.text(v) for v in _ENV if config.is_set(v)}
    if given:
        _state["setting"] = "environment (" + " ".join(f"{v}={value}" for v, value in given.items()) + ")"
        return _state["setting"]
    setting = "glibc default"
    if enable:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            big = 2 ** 31 - 1
            if mallopt(M_MMAP_THRESHOLD, big) == 1 and mallopt(M_TRIM_THRESHOLD, big) == 1:
                setting = "mallopt (mmap and trim thresholds 2 GiB)"
        except (OSError, AttributeError):
            pass
    _state["setting"] = setting
    return setting
