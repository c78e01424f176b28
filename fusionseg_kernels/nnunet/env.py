"""What nnU-Net needs from the environment to use this package's trainers, and the settings
the trainers read from it (FUSIONSEG_BACKEND, FUSIONSEG_NUM_EPOCHS,
FUSIONSEG_ITERATIONS_PER_EPOCH, FUSIONSEG_VAL_ITERATIONS_PER_EPOCH, FUSIONSEG_NUM_THREADS; see
`fusionseg_kernels.config` and docs/configuration.md).

nnU-Net v2 (>= 2.8) looks for a trainer named on its command line in its own
``nnunetv2.training.nnUNetTrainer`` package, then in every folder listed in ``nnUNet_extTrainer``
(``os.pathsep``-separated, searched recursively; the class must subclass ``nnUNetTrainer``).
`ext_trainer_dir` is the folder to list: it holds one small module that re-exports
`fusionseg_kernels.nnunet.trainers`, so nnU-Net gets the very classes this package defines.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from fusionseg_kernels import config

#: trainer attribute -> the variable that sets it
LENGTH_VARIABLES = {
    "num_epochs": "FUSIONSEG_NUM_EPOCHS",
    "num_iterations_per_epoch": "FUSIONSEG_ITERATIONS_PER_EPOCH",
    "num_val_iterations_per_epoch": "FUSIONSEG_VAL_ITERATIONS_PER_EPOCH",
}


def ext_trainer_dir() -> Path:
    """The folder to put in ``nnUNet_extTrainer`` so that nnU-Net finds this package's trainers."""
    return Path(__file__).resolve().parent / "ext_trainers"


def ext_trainer_value(existing: str | None = None) -> str:
    """The value ``nnUNet_extTrainer`` should have: `ext_trainer_dir`, followed by the folders
    already in `existing` (the current value, by default) other than that one."""
    if existing is None:
        existing = config.text("nnUNet_extTrainer") or ""
    ours = str(ext_trainer_dir())
    others = [p for p in existing.split(os.pathsep) if p.strip() and os.path.abspath(p) != ours]
    return os.pathsep.join([ours, *others])


def shell_lines(keep_existing: bool = True) -> list[str]:
    """POSIX shell lines that make nnU-Net find the trainers (``eval "$(fusionseg nnunet-env)"``)."""
    value = ext_trainer_value() if keep_existing else str(ext_trainer_dir())
    return [f"export nnUNet_extTrainer={shlex.quote(value)}"]


def backend_from_env() -> str:
    """The InceptionDWConv3d backend named by FUSIONSEG_BACKEND ("auto" when unset or empty)."""
    from fusionseg_kernels.ops.inception_dwconv3d.dispatch import BACKENDS

    return config.choice("FUSIONSEG_BACKEND", BACKENDS, "auto")


def threads_from_env() -> int | None:
    """FUSIONSEG_NUM_THREADS as a positive integer, or None when unset."""
    return config.positive_int("FUSIONSEG_NUM_THREADS")


def training_length_from_env() -> dict[str, int]:
    """The trainer attributes set by FUSIONSEG_NUM_EPOCHS, FUSIONSEG_ITERATIONS_PER_EPOCH and
    FUSIONSEG_VAL_ITERATIONS_PER_EPOCH (only those that are set), each a positive integer."""
    out = {}
    for attr, var in LENGTH_VARIABLES.items():
        value = config.positive_int(var)
        if value is not None:
            out[attr] = value
    return out
