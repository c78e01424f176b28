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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into one line, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _run_complexity(args: argparse.Namespace) -> int:
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
            args.parser.error(f"--patch {' '.join(map(str, patch))} does not fit the {name} network: {err}")
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


def add_complexity(subparsers) -> None:
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
    p.set_defaults(func=_run_complexity, parser=p)


SUBCOMMANDS: list[Callable] = [add_complexity]


def add_profile(subparsers) -> None:
    from pathlib import Path

    p = subparsers.add_parser(
        "profile", help="time and memory-time curve of a command (GPU through NVML, else RSS), as FLARE measures",
        description="Runs COMMAND while a background thread samples memory every --interval seconds: the whole "
                    "GPU's used memory through NVML, or without a GPU the resident memory of the command's "
                    "process tree. Reports wall time, max MB, total MB·s (sum of samples × interval) and the "
                    "curve; the command's exit status is passed through. --per-case runs COMMAND once per "
                    "<case>_0000.nii.gz of -i, {input} replaced by a folder holding only that case and {output} "
                    "by -o.")
    p.add_argument("--json", type=Path, help="write the profile here (--per-case: also .csv, .md and "
                   "_curves.csv beside it; default OUTPUT/profile.json)")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between samples (default 0.1)")
    p.add_argument("--device-index", type=int, default=0, help="NVML index of the GPU (default 0)")
    p.add_argument("--source", choices=("auto", "nvml", "rss"), default="auto",
                   help="auto (default): NVML when it works, else RSS")
    p.add_argument("--per-case", action="store_true", help="FLARE's protocol: one run per case")
    p.add_argument("-i", "--input", type=Path, help="--per-case: folder of <case>_0000.nii.gz images")
    p.add_argument("-o", "--output", type=Path, help="--per-case: output folder ({output})")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND", help="-- COMMAND ...")

    def run(args):
        from fusionseg_kernels.profiling import run_cli

        return run_cli(args, p.error)
    p.set_defaults(func=run)


SUBCOMMANDS.append(add_profile)


def add_predict(subparsers) -> None:
    from pathlib import Path

    p = subparsers.add_parser(
        "predict", help="segment CT volumes with an nnU-Net model folder (one uint8 mask per case)",
        description="Segments a CT file or every image of a folder (.nii.gz, .nii, .mha, .mhd, .nrrd, .nhdr) "
                    "with the network of an nnU-Net v2 model folder and writes one mask per case with the "
                    "input's geometry; <case>_0000.nii.gz becomes <case>.nii.gz. --mode exact reproduces "
                    "nnU-Net v2's predictor (needs nnunetv2); --mode fast (default) preprocesses on the "
                    "device and takes the argmax at network resolution. See docs/inference.md.")
    p.add_argument("-i", "--input", required=True, type=Path, help="an image file or a folder of images")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (created if needed)")
    p.add_argument("-m", "--model", required=True, type=Path,
                   help="nnU-Net model folder: plans.json, dataset.json, fold_*/checkpoint_final.pth")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto (default): cuda when a GPU is available")
    p.add_argument("--backend", choices=("auto", "reference", "cpu", "cuda", "triton"), default="auto",
                   help="InceptionDWConv3d backend (default auto)")
    p.add_argument("--mode", choices=("exact", "fast"), default="fast", help="default fast")
    p.add_argument("-f", "--folds", nargs="+", help="folds to use (default: every fold_N with a checkpoint)")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (up to 8 passes per tile)")
    p.add_argument("--step", type=float, default=0.5, help="tile step as a fraction of the patch (default 0.5)")
    p.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16",
                   help="fast mode on a GPU: autocast dtype (default fp16)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-keep-freed-memory", action="store_true",
                   help="leave glibc's malloc thresholds alone (default: keep freed memory for reuse)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no timing table")
    p.add_argument("--timings", type=Path, metavar="FILE", help="write per-case stage times as JSON")

    def run(args):
        from fusionseg_kernels.inference.cli import run_predict

        return run_predict(args)
    p.set_defaults(func=run)


SUBCOMMANDS.append(add_predict)


def _run_nnunet_env(args: argparse.Namespace) -> int:
    from fusionseg_kernels.nnunet import env

    for line in env.shell_lines(keep_existing=not args.only):
        print(line)
    return 0


def add_nnunet_env(subparsers) -> None:
    p = subparsers.add_parser(
        "nnunet-env", help="shell lines that let nnU-Net find this package's trainers",
        description="Prints `export nnUNet_extTrainer=...` (the folder of this package's nnU-Net trainers, "
                    "followed by any folders already set); use as: eval \"$(fusionseg nnunet-env)\".")
    p.add_argument("--only", action="store_true", help="do not keep folders already in nnUNet_extTrainer")
    p.set_defaults(func=_run_nnunet_env)


SUBCOMMANDS.append(add_nnunet_env)


def _run_nnunet_plans(args: argparse.Namespace) -> int:
    from fusionseg_kernels.nnunet import plans

    path = plans.rewrite_plans(args.dataset, network=args.network, plans_name=args.plans_name,
                               source_plans=args.source_plans, configuration=args.configuration,
                               patch_size=args.patch, features=args.features, batch_size=args.batch_size)
    print(f"wrote {path} (use: -p {args.plans_name})")
    return 0


def add_nnunet_plans(subparsers) -> None:
    p = subparsers.add_parser(
        "nnunet-plans", help="rewrite a dataset's nnU-Net plans so that 3d_fullres uses this package's network",
        description="Copies <dataset>/<source>.json to <dataset>/<plans-name>.json (atomically) with the "
                    "configuration's network set to fusionseg_kernels.models.<Network> and its arch_kwargs; "
                    "the preprocessed data of the source plans is reused.")
    p.add_argument("dataset", help="a preprocessed dataset folder, a plans .json file, or a dataset name or id "
                                   "(looked up in $nnUNet_preprocessed)")
    p.add_argument("--network", choices=("dual", "single", "plain"), default="dual")
    p.add_argument("--plans-name", default="nnUNetPlans_fusionseg", help="the new plans identifier (-p of nnU-Net)")
    p.add_argument("--source-plans", default="nnUNetPlans", help="the plans identifier to start from")
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--patch", nargs=3, type=int, metavar=("D", "H", "W"), help="new patch size")
    p.add_argument("--features", nargs="+", type=int, metavar="F", help="features per stage (one per stage)")
    p.add_argument("--batch-size", type=int)
    p.set_defaults(func=_run_nnunet_plans)


SUBCOMMANDS.append(add_nnunet_plans)


def add_synth(subparsers) -> None:
    from pathlib import Path

    p = subparsers.add_parser(
        "synth", help="write an nnU-Net raw dataset of synthetic whole-body CTs with lesion labels",
        description="Writes N synthetic whole-body CT cases (int16 HU) with lesion masks as an nnU-Net v2 "
                    "raw dataset: imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz, dataset.json. Case i "
                    "is drawn from seed S+i; seeds with seed %% 4 == 3 have no lesion. Sizes and spacings "
                    "are in array order (z, y, x); at most 600 slices of 512 x 512. See "
                    "docs/data_and_evaluation.md.")
    p.add_argument("-o", "--output", required=True, type=Path, help="dataset folder (created if needed)")
    p.add_argument("-n", type=int, default=4, help="number of cases (default 4)")
    p.add_argument("--size", nargs=3, type=int, metavar=("Z", "Y", "X"),
                   help="voxels per axis (default 128 256 256)")
    p.add_argument("--spacing", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="voxel size in mm (default 5.0 1.6 1.6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case (default 0)")

    def run(args):
        from fusionseg_kernels.data.synth import run_cli

        return run_cli(args)
    p.set_defaults(func=run)


SUBCOMMANDS.append(add_synth)


def add_evaluate(subparsers) -> None:
    from pathlib import Path

    p = subparsers.add_parser(
        "evaluate", help="DSC and NSD (2 mm) of predicted lesion masks, scored as FLARE task 1 does",
        description="Scores every <case>.nii.gz of --gt against the file of the same name in --pred: DSC "
                    "and NSD at 2 mm (DeepMind surface-distance, ground-truth spacing), labels above 1 "
                    "score 0, both empty 1, one empty 0, NSD 0 when DSC < 0.2. Writes case,dsc,nsd,note "
                    "and prints the means; a case without prediction counts as 0. See "
                    "docs/data_and_evaluation.md.")
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted masks <case>.nii.gz")
    p.add_argument("--gt", required=True, type=Path, help="folder of ground-truth masks <case>.nii.gz")
    p.add_argument("-o", "--output", required=True, type=Path, help="CSV file to write")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-case lines (warnings and means only)")

    def run(args):
        from fusionseg_kernels.evaluation import run_cli

        return run_cli(args)
    p.set_defaults(func=run)


SUBCOMMANDS.append(add_evaluate)


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
