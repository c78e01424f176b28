"""``fusionseg synth``: an nnU-Net raw dataset of synthetic whole-body CTs with lesion labels."""
from __future__ import annotations

import time
from pathlib import Path



def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="write an nnU-Net raw dataset of synthetic whole-body CTs with lesion labels",
        description="Writes N synthetic whole-body CT cases (int16 HU) with lesion masks as an nnU-Net v2 "
                    "raw dataset: imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz, dataset.json. Case i "
                    "is drawn from seed S+i; seeds S with S mod 4 = 3 have no lesion. Sizes and spacings "
                    "are in array order (z, y, x); at most 600 slices of 512 x 512. See "
                    "docs/data_and_evaluation.md.")
    p.add_argument("-o", "--output", required=True, type=Path, help="dataset folder (created if needed)")
    p.add_argument("-n", type=int, default=4, help="number of cases (default 4)")
    p.add_argument("--size", nargs=3, type=int, metavar=("Z", "Y", "X"),
                   help="voxels per axis (default 128 256 256)")
    p.add_argument("--spacing", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="voxel size in mm (default 5.0 1.6 1.6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case (default 0)")
    # the values are checked by the library (one rule for the command and the Python API)
    p.set_defaults(run=run)


def run(args) -> int:
    from fusionseg_kernels.data.synth import DEFAULT_SIZE, DEFAULT_SPACING, has_lesions, write_dataset

    t0 = time.perf_counter()
    size = DEFAULT_SIZE if args.size is None else tuple(args.size)
    spacing = DEFAULT_SPACING if args.spacing is None else tuple(args.spacing)
    names = write_dataset(args.output, n=args.n, size=size, spacing=spacing, seed=args.seed)
    no_lesion = [c for i, c in enumerate(names) if not has_lesions(args.seed + i)]
    what = f"1 case ({names[0]}" if len(names) == 1 else f"{len(names)} cases ({names[0]} .. {names[-1]}"
    print(f"wrote {what}; size z, y, x = {size}, "
          f"spacing z, y, x = {spacing} mm) to {args.output}: imagesTr/, labelsTr/, "
          f"dataset.json in {time.perf_counter() - t0:.1f} s")
    if no_lesion:
        print(f"cases without lesions: {', '.join(no_lesion)}")
    return 0
