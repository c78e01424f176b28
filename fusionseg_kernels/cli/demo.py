"""``fusionseg demo``: a tiny random-weight model folder and synthetic CTs to try ``fusionseg predict``."""
from __future__ import annotations

from pathlib import Path

from .arguments import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="write a tiny random-weight nnU-Net model folder and synthetic CTs (for trying predict)",
        description="Writes FOLDER/model (an nnU-Net model folder: the release's plans with a reduced network "
                    "and patch, random weights, trainer nnUNetTrainernew) and FOLDER/images/<case>_0000.nii.gz. "
                    "The masks such a model gives are meaningless; the set-up is for trying fusionseg predict "
                    "and its options in seconds on a CPU.")
    p.add_argument("folder", type=Path)
    p.add_argument("--cases", type=positive_int, default=2, help="number of CT files (default 2)")
    p.add_argument("--size", type=positive_int, nargs=3, default=(16, 48, 48), metavar=("Z", "Y", "X"),
                   help="voxels per axis (default 16 48 48)")
    p.set_defaults(run=run)


def run(args) -> int:
    from fusionseg_kernels.inference.demo import make_demo

    model, images = make_demo(args.folder, args.cases, args.size)
    print(f"model folder: {model}\nimages:       {images}")
    return 0
