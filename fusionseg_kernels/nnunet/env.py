"""What nnU-Net needs from the environment to use this package's trainers, and the environment
variables the trainers read.

nnU-Net v2 (>= 2.8) looks for a trainer named on its command line in its own
``nnunetv2.training.nnUNetTrainer`` package, then in every folder listed in ``nnUNet_extTrainer``
(``os.pathsep``-separated, searched recursively; the class must subclass ``nnUNetTrainer``).
`ext_trainer_dir` is the folder to list: it holds one small module that re-exports
`fusionseg_kernels.nnunet.trainers`, so nnU-Net gets the very classes this package defines.

Environment variables read by the trainers (when a network is built or a trainer created):

    FUSIONSEG_BACKEND                   InceptionDWConv3d backend: auto (default), reference, cpu, cuda, triton
    FUSIONSEG_NUM_EPOCHS                number of epochs (default: the trainer's, 2000 for nnUNetTrainernew)
    FUSIONSEG_ITERATIONS_PER_EPOCH      training iterations per epoch (default 250)
    FUSIONSEG_VAL_ITERATIONS_PER_EPOCH  validation iterations per epoch (default 50)
    FUSIONSEG_NUM_THREADS               torch CPU threads of the training process (nnUNetv2_train
                                        -device cpu otherwise takes every core)
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from fusionseg_kernels.errors import FusionsegError

BACKEND_VARIABLE = "FUSIONSEG_BACKEND"
LENGTH_VARIABLES = {
    "num_epochs": "FUSIONSEG_NUM_EPOCHS",
    "num_iterations_per_epoch": "FUSIONSEG_ITERATIONS_PER_EPOCH",
    "num_val_iterations_per_epoch": "FUSIONSEG_VAL_ITERATIONS_PER_EPOCH",
}
THREADS_VARIABLE = "FUSIONSEG_NUM_THREADS"


class NnUNetSetupError(FusionsegError, ValueError):
    """An environment variable for the nnU-Net trainers holds a value they cannot use."""


def ext_trainer_dir() -> Path:
    """The folder to put in ``nnUNet_extTrainer`` so that nnU-Net finds this package's trainers."""
    return Path(__file__).resolve().parent / "ext_trainers"


def ext_trainer_value(existing: str | None = None) -> str:
    """The value ``nnUNet_extTrainer`` should have: `ext_trainer_dir`, followed by the folders
    already in `existing` (the current value, by default) other than that one."""
    if existing is None:
        existing = os.environ.get("nnUNet_extTrainer", "")
    ours = str(ext_trainer_dir())
    others = [p for p in existing.split(os.pathsep) if p.strip() and os.path.abspath(p) != ours]
    return os.pathsep.join([ours, *others])


def shell_lines(keep_existing: bool = True) -> list[str]:
    """POSIX shell lines that make nnU-Net find the trainers (``eval "$(fusionseg nnunet-env)"``)."""
    value = ext_trainer_value() if keep_existing else str(ext_trainer_dir())
    return [f"export nnUNet_extTrainer={shlex.quote(value)}"]


def backend_from_env() -> str:
    """The InceptionDWConv3d backend named by FUSIONSEG_BACKEND ("auto" when unset or empty)."""
    from fusionseg_kernels.ops.inception_dwconv3d import BACKENDS

    value = os.environ.get(BACKEND_VARIABLE, "").strip() or "auto"
    if value not in BACKENDS:
        raise NnUNetSetupError(f"{BACKEND_VARIABLE}={value!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    return value


def _positive_int(var: str) -> int | None:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise NnUNetSetupError(f"{var}={raw!r} must be a positive integer")
    return value


def threads_from_env() -> int | None:
    """FUSIONSEG_NUM_THREADS as a positive integer, or None when unset."""
    return _positive_int(THREADS_VARIABLE)


def training_length_from_env() -> dict[str, int]:
    """The trainer attributes set by FUSIONSEG_NUM_EPOCHS, FUSIONSEG_ITERATIONS_PER_EPOCH and
    FUSIONSEG_VAL_ITERATIONS_PER_EPOCH (only those that are set), each a positive integer."""
    out = {}
    for attr, var in LENGTH_VARIABLES.items():
        value = _positive_int(var)
        if value is not None:
            out[attr] = value
    return out
