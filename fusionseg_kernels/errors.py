"""The project's error types.

Every error a user can cause with bad input (a file, an argument, a model folder) is a
`FusionsegError` whose message is one sentence naming what is wrong and where. The command line
(`fusionseg ...`) prints such errors as one line and exits non-zero instead of a traceback.
"""
from __future__ import annotations


class FusionsegError(Exception):
    """Base class: a problem with the user's input, explained in the message."""


class CheckpointError(FusionsegError, ValueError):
    """A checkpoint file that cannot be read or does not hold the expected network."""


class InputImageError(FusionsegError, ValueError):
    """An image file that cannot be read, or is not a 3-D volume this project can process."""


class ModelFolderError(FusionsegError, ValueError):
    """An nnU-Net model folder that is missing files or holds an incompatible model."""


class OutputFolderError(FusionsegError, OSError):
    """An output folder or file that cannot be created or written."""


class EnvironmentSetupError(FusionsegError, RuntimeError):
    """A requested device or an optional dependency that is not available here."""


class ParameterError(FusionsegError, ValueError):
    """A size, spacing, count or other value outside the range a function or command accepts."""


class EvaluationError(FusionsegError, ValueError):
    """Prediction and ground-truth files or folders that cannot be scored against each other."""
