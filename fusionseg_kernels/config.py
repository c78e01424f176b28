"""Every environment variable the package reads, parsed in one place.

`VARIABLES` lists them (name, default, meaning, when it is read); docs/configuration.md shows
the same table and a test keeps the two equal. Other modules call the typed readers below
instead of ``os.environ``; a bad value raises `ConfigurationError` with one sentence naming the
variable. The C++ library reads ``FUSIONSEG_POISON_OUTPUTS`` itself (a plain CMake build has no
Python), so it is listed here too.

This module imports nothing heavy: it is read before torch is imported.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ConfigurationError


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    meaning: str
    read: str            # when the value is read (it matters for those read once)


VARIABLES = (
    Variable("FUSIONSEG_BACKEND", "auto",
             "InceptionDWConv3d backend of the networks the nnU-Net trainers build: auto, reference, cpu, cuda, triton",
             "when a trainer builds its network"),
    Variable("FUSIONSEG_NUM_EPOCHS", "the trainer's (2000)", "number of training epochs of the nnU-Net trainers",
             "when a trainer is created"),
    Variable("FUSIONSEG_ITERATIONS_PER_EPOCH", "the trainer's (250)", "training iterations per epoch",
             "when a trainer is created"),
    Variable("FUSIONSEG_VAL_ITERATIONS_PER_EPOCH", "the trainer's (50)", "validation iterations per epoch",
             "when a trainer is created"),
    Variable("FUSIONSEG_NUM_THREADS", "torch's choice",
             "torch CPU threads of a training process (nnUNetv2_train -device cpu otherwise takes every core)",
             "when a trainer is created"),
    Variable("FUSIONSEG_TRITON_AUTOTUNE", "1",
             "0: one fixed Triton tile config per shape class instead of autotuning (faster first call)",
             "once, when the Triton backend is imported"),
    Variable("TRITON_INTERPRET", "unset",
             "1: run the Triton backend on CPU tensors through Triton's interpreter (slow; how CI tests it)",
             "once, when the Triton backend is imported: set it before importing fusionseg_kernels"),
    Variable("FUSIONSEG_NO_EXTENSION", "unset",
             "1: do not load the C++ extension (pure-PyTorch reference only), for a process that loads "
             "another build of the op schemas", "once, when the extension is first needed"),
    Variable("FUSIONSEG_POISON_OUTPUTS", "unset",
             "1: the C++/CUDA kernels NaN-fill their outputs before writing them (tests catch unwritten elements)",
             "by the C++ library, at every call"),
    Variable("nnUNet_extTrainer", "unset",
             "folders where nnU-Net looks for trainers; fusionseg nnunet-env prints the value that adds this "
             "package's", "by fusionseg nnunet-env (and by nnU-Net)"),
    Variable("nnUNet_preprocessed", "unset",
             "nnU-Net's preprocessed-data folder, where fusionseg nnunet-plans looks up a dataset name or id",
             "by fusionseg nnunet-plans"),
    Variable("MALLOC_MMAP_THRESHOLD_", "unset",
             "glibc's: when it (or MALLOC_TRIM_THRESHOLD_) is set, fusionseg predict leaves glibc's "
             "thresholds as they are", "when fusionseg predict starts"),
    Variable("MALLOC_TRIM_THRESHOLD_", "unset", "glibc's: see MALLOC_MMAP_THRESHOLD_",
             "when fusionseg predict starts"),
    Variable("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True (set by fusionseg predict when unset)",
             "torch's CUDA allocator settings", "at the first CUDA allocation"),
)
_NAMES = {v.name for v in VARIABLES}


def _raw(name: str) -> str:
    if name not in _NAMES:
        raise KeyError(f"{name} is not a variable of this package (add it to fusionseg_kernels.config.VARIABLES)")
    return os.environ.get(name, "").strip()


def text(name: str) -> str | None:
    """The variable's value, None when unset or empty."""
    return _raw(name) or None


def flag(name: str, default: bool = False) -> bool:
    """A switch: "1"/"0" (also true/false, yes/no, on/off); `default` when unset."""
    raw = _raw(name).lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a switch; use 1 or 0")


def positive_int(name: str) -> int | None:
    """A positive integer, None when unset."""
    raw = _raw(name)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigurationError(f"{name}={raw!r} must be a positive integer")
    return value


def choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """One of `choices`; `default` when unset."""
    raw = _raw(name) or default
    if raw not in choices:
        raise ConfigurationError(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return raw


def is_set(name: str) -> bool:
    return bool(_raw(name))


def set_default(name: str, value: str) -> None:
    """Sets a variable read by a library this package uses (torch), unless the user set it."""
    _raw(name)
    os.environ.setdefault(name, value)


# ---------------------------------------------------------------------------- the package's own

def triton_interpret() -> bool:
    # exactly Triton's own test, so both always agree on whether the interpreter runs
    return _raw("TRITON_INTERPRET") == "1"


def triton_autotune() -> bool:
    return flag("FUSIONSEG_TRITON_AUTOTUNE", default=True)


def extension_disabled() -> bool:
    return flag("FUSIONSEG_NO_EXTENSION")
