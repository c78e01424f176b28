"""Rules for the numbers users give (on the command line or to the Python API), each written once.

Each ``check_*`` returns the value as its proper type or raises `ParameterError` with one
sentence naming the value. The command line uses the same functions as argparse types
(`fusionseg_kernels.cli.arguments`), so a rule cannot differ between the two. Imports nothing
heavy.
"""
from __future__ import annotations

import math
import numbers

from .errors import ParameterError


def _as_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
        raise ParameterError(f"{name} {value!r} is not an integer.")
    try:
        return int(value)
    except ValueError:
        raise ParameterError(f"{name} {value!r} is not an integer.") from None


def _as_float(value, name: str) -> float:
    if isinstance(value, bool):
        raise ParameterError(f"{name} {value!r} is not a number.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} {value!r} is not a number.") from None


def check_positive_int(value, name: str = "the value") -> int:
    """An integer >= 1."""
    v = _as_int(value, name)
    if v < 1:
        raise ParameterError(f"{name} {v} is not positive.")
    return v


def check_non_negative_int(value, name: str = "the value") -> int:
    """An integer >= 0."""
    v = _as_int(value, name)
    if v < 0:
        raise ParameterError(f"{name} {v} is negative.")
    return v


def check_positive_float(value, name: str = "the value") -> float:
    """A finite number > 0 (not inf, not nan)."""
    v = _as_float(value, name)
    if not (math.isfinite(v) and v > 0):
        raise ParameterError(f"{name} {value} is not a finite positive number.")
    return v


def check_step(value, name: str = "the tile step") -> float:
    """The sliding window's step as a fraction of the patch: in (0, 1]."""
    v = _as_float(value, name)
    if not (math.isfinite(v) and 0 < v <= 1):
        raise ParameterError(f"{name} {value} is not in (0, 1].")
    return v


def check_threads(value, name: str = "the thread count") -> int:
    """A torch CPU thread count: an integer >= 1."""
    return check_positive_int(value, name)
