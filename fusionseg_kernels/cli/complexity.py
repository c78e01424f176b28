"""``fusionseg complexity``: parameters and MACs per patch, by layer type."""
from __future__ import annotations

import json

from .arguments import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "complexity", help="parameters and MACs per patch by layer type (dual, single, plain)",
        description="Counts parameters and MACs with FlopCounterMode on fake/meta tensors (no compute), "
                    "by layer type; for the default 96×128×128 patch beside the figures measured on the "
                    "original code and printed in the paper.")
    p.add_argument("--networks", nargs="+", choices=("dual", "single", "plain"),
                   default=["dual", "single", "plain"])
    p.add_argument("--patch", nargs=3, type=positive_int, metavar=("D", "H", "W"), default=[96, 128, 128],
                   help="patch size in voxels (default 96 128 128)")
    p.add_argument("--json", action="store_true", help="print the raw counts as JSON")
    p.set_defaults(run=lambda args: run(args, p))


def run(args, parser) -> int:
    import torch

    from fusionseg_kernels.models import NETWORKS, complexity

    networks = list(dict.fromkeys(args.networks))  # each network once, in the order given
    patch = tuple(args.patch)
    for name in networks:  # the networks' own input rule decides which patches are valid
        with torch.device("meta"):
            model = NETWORKS[name]()
        try:
            model.check_input(torch.empty(1, model.input_channels, *patch, device="meta"))
        except ValueError as err:
            parser.error(f"--patch {' '.join(map(str, patch))} does not fit the {name} network: {err}")
    rows = complexity.report(networks, patch)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        label = "×".join(map(str, patch))
        print(f"Parameters and multiply-accumulates per {label} patch (batch 1)\n")
        print(complexity.format_table(rows))
        print()
        print(complexity.explanation(patch))
    return 0
