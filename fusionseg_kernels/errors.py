"""Every error type of the project, in one place.

Every error a user can cause (a file, an argument, a model folder, a backend that cannot run
here) is a `FusionsegError` whose message is one sentence naming what is wrong and where. The
command line (`fusionseg ...`) has one handler: it prints such an error as one line and exits
non-zero instead of showing a traceback. A second base class keeps each error catchable the way
Python code expects (ValueError for bad values, OSError for files that cannot be written,
RuntimeError for what this machine cannot do).

This module imports nothing heavy: any part of the project may import it.
"""
from __future__ import annotations


class FusionsegError(Exception):
    """Base class: a problem with the user's input or machine, explained in the message."""


# ---------------------------------------------------------------------------- files and folders

class InputImageError(FusionsegError, ValueError):
    """An image file that cannot be read, or is not a 3-D volume this project can process."""


class OutputFolderError(FusionsegError, OSError):
    """An output folder or file that cannot be created or written, or that would overwrite an input."""


class CheckpointError(FusionsegError, ValueError):
    """A checkpoint file that cannot be read or does not hold the expected network."""


class ReleasedStateDictError(CheckpointError):
    """A released-form state dict that cannot be loaded; the message lists every problem at once."""


class ModelFolderError(FusionsegError, ValueError):
    """An nnU-Net model folder that is missing files or holds an incompatible model."""


class PlansError(FusionsegError, ValueError):
    """nnU-Net plans that cannot be found, read, rewritten, or built as a network of this package."""


class EvaluationError(FusionsegError, ValueError):
    """Prediction and ground-truth files or folders that cannot be scored against each other."""


# ---------------------------------------------------------------------------- values and settings

class ParameterError(FusionsegError, ValueError):
    """A size, spacing, count or other value outside the range a function or command accepts."""


class ConfigurationError(FusionsegError, ValueError):
    """An environment variable of the project holds a value it cannot use."""


class ArchitectureError(FusionsegError, ValueError):
    """Constructor or plans arguments describing a network these classes cannot build."""


class InputSizeError(FusionsegError, ValueError):
    """The input's spatial size is not divisible by the network's total stride, or so small that
    the bottleneck has a single voxel (InstanceNorm needs more than one)."""


class ProfileError(FusionsegError, ValueError):
    """A profile that cannot be taken: no command, a command that cannot be started, an input
    folder without cases, or a memory source that is not available."""


# ---------------------------------------------------------------------------- this machine

class EnvironmentSetupError(FusionsegError, RuntimeError):
    """A requested device or an optional dependency that is not available here."""


class ExtensionNotBuiltError(FusionsegError, RuntimeError):
    """The C++ operator library is missing or cannot be loaded; the message says how to build it."""


class BackendUnavailableError(FusionsegError, RuntimeError):
    """The requested backend is not built or cannot run on these tensors."""
