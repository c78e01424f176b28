"""argparse types for the commands, made from the rules of `fusionseg_kernels.parameters` (so
the command line and the Python API accept the same values). argparse turns an
`argparse.ArgumentTypeError` into one line and exit status 2.

Nothing here imports torch: ``fusionseg --help`` and every ``fusionseg COMMAND --help`` answer
without it.
"""
from __future__ import annotations

import argparse
from typing import Callable

from fusionseg_kernels import parameters
from fusionseg_kernels.errors import ParameterError


def argument_type(check: Callable, what: str) -> Callable[[str], object]:
    """An argparse type that applies `check` (a ``parameters.check_*`` rule) to the text."""
    def parse(text: str):
        try:
            return check(text, what)
        except ParameterError as err:
            raise argparse.ArgumentTypeError(str(err).rstrip(".")) from None
    parse.__name__ = what.replace(" ", "_")
    return parse


positive_int = argument_type(parameters.check_positive_int, "the value")
non_negative_int = argument_type(parameters.check_non_negative_int, "the value")
positive_float = argument_type(parameters.check_positive_float, "the value")
tile_step = argument_type(parameters.check_step, "the tile step")
threads = argument_type(parameters.check_threads, "the thread count")
