"""The ``fusionseg`` command line (also ``python -m fusionseg_kernels.cli``).

Each subcommand is one ``add_<name>(subparsers)`` function that registers its parser and sets
``func`` to the function that runs it; `SUBCOMMANDS` lists them. To add a subcommand, write such a
function and append it to `SUBCOMMANDS` — `main` needs no change.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable


def _run_complexity(args: argparse.Namespace) -> int:
    from fusionseg_kernels.models import complexity

    rows = complexity.report(args.networks, tuple(args.patch))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        d, h, w = args.patch
        print(f"Parameters and multiply-accumulates per {d}×{h}×{w} patch (batch 1)\n")
        print(complexity.format_table(rows))
        print()
        print(complexity.EXPLANATION)
    return 0


def add_complexity(subparsers) -> None:
    p = subparsers.add_parser(
        "complexity", help="parameters and MACs per patch by layer type (dual, single, plain)",
        description="Counts parameters and MACs with FlopCounterMode on fake/meta tensors (no compute), "
                    "by layer type, beside the figures of SPEC §1 and the paper.")
    p.add_argument("--networks", nargs="+", choices=("dual", "single", "plain"),
                   default=["dual", "single", "plain"])
    p.add_argument("--patch", nargs=3, type=int, metavar=("D", "H", "W"), default=[96, 128, 128])
    p.add_argument("--json", action="store_true", help="print the raw counts as JSON")
    p.set_defaults(func=_run_complexity)


SUBCOMMANDS: list[Callable] = [add_complexity]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionseg", description="fusionseg: fused InceptionDWConv3d "
                                     "kernels and the dual-branch FLARE 2025 U-Net")
    from fusionseg_kernels import __version__

    parser.add_argument("--version", action="version", version=f"fusionseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand. A `FusionsegError` (bad input a user can fix) is printed as one line
    on stderr with exit status 1; argparse itself exits 2 on bad arguments."""
    from fusionseg_kernels.errors import FusionsegError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FusionsegError as err:
        print(f"fusionseg {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fusionseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
