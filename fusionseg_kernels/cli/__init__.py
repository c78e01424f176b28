"""The ``fusionseg`` command line (also ``python -m fusionseg_kernels.cli``).

One module per command in this package, each with ``register(subparsers)``, which adds its
parser and sets ``run`` to the function that runs it; `COMMANDS` lists the modules in the order
``fusionseg --help`` shows them. A command's run function turns its arguments into typed values
and calls the library; the library never sees an ``argparse.Namespace``.

`main` is the one handler of the project's errors: a `FusionsegError` (bad input a user can fix,
a backend or device that is not available) is printed as one line on stderr with exit status 1;
argparse itself exits 2 on bad arguments. Nothing heavy is imported until a command runs, so
``fusionseg --help``, ``--version`` and every ``COMMAND --help`` answer without importing torch.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from fusionseg_kernels._version import __version__

COMMANDS = ("predict", "synth", "evaluate", "profile", "complexity", "nnunet", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionseg", description="fusionseg: fused InceptionDWConv3d "
                                     "kernels and the dual-branch FLARE 2025 U-Net")
    parser.add_argument("--version", action="version", version=f"fusionseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def command_names(parser: argparse.ArgumentParser | None = None) -> list[str]:
    """The subcommands ``fusionseg`` accepts (``nnunet`` registers two)."""
    parser = parser or build_parser()
    for action in parser._actions:  # noqa: SLF001 - argparse has no public listing of subparsers
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return list(action.choices)
    return []


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand and returns its exit status (see the module docstring)."""
    from fusionseg_kernels.errors import FusionsegError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except FusionsegError as err:
        print(f"fusionseg {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fusionseg {args.command}: interrupted", file=sys.stderr)
        return 130


def run_and_exit() -> None:
    """The ``fusionseg`` console command: `main`, then the process ends at once.

    Every file a command writes is complete and renamed into place before `main` returns; what
    Python would still do is tear down torch and hand gigabytes back to the system, about 0.7 s
    that FLARE counts in every case's time. So the output streams are flushed and the process
    leaves with ``os._exit``. (`main` itself returns normally, for tests and ``python -m``.)"""
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
