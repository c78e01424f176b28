"""``fusionseg nnunet-env`` and ``fusionseg nnunet-plans``: using this package's networks through
nnU-Net's own commands."""
from __future__ import annotations

from .arguments import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "nnunet-env", help="shell lines that let nnU-Net find this package's trainers",
        description="Prints `export nnUNet_extTrainer=...` (the folder of this package's nnU-Net trainers, "
                    "followed by any folders already set); use as: eval \"$(fusionseg nnunet-env)\".")
    p.add_argument("--only", action="store_true", help="do not keep folders already in nnUNet_extTrainer")
    p.set_defaults(run=run_env)

    p = subparsers.add_parser(
        "nnunet-plans", help="rewrite a dataset's nnU-Net plans so that 3d_fullres uses this package's network",
        description="Copies <dataset>/<source>.json to <dataset>/<plans-name>.json (atomically) with the "
                    "configuration's network set to fusionseg_kernels.models.<Network> and its arch_kwargs; "
                    "the preprocessed data of the source plans is reused.")
    p.add_argument("dataset", help="a preprocessed dataset folder, a plans .json file, or a dataset name or id "
                                   "(looked up in $nnUNet_preprocessed)")
    p.add_argument("--network", choices=("dual", "single", "plain"), default="dual")
    p.add_argument("--plans-name", default="nnUNetPlans_fusionseg",
                   help="the new plans identifier (-p of nnU-Net); a name, not a path")
    p.add_argument("--source-plans", default="nnUNetPlans", help="the plans identifier to start from")
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--patch", nargs=3, type=positive_int, metavar=("D", "H", "W"), help="new patch size")
    p.add_argument("--features", nargs="+", type=positive_int, metavar="F", help="features per stage (one per stage)")
    p.add_argument("--batch-size", type=positive_int)
    p.set_defaults(run=run_plans)


def run_env(args) -> int:
    from fusionseg_kernels.nnunet import env

    for line in env.shell_lines(keep_existing=not args.only):
        print(line)
    return 0


def run_plans(args) -> int:
    from fusionseg_kernels.nnunet import plans

    path = plans.rewrite_plans(args.dataset,
                               network=args.network, plans_name=args.plans_name,
                               source_plans=args.source_plans, configuration=args.configuration,
                               patch_size=args.patch, features=args.features, batch_size=args.batch_size)
    print(f"wrote {path} (use: -p {args.plans_name})")
    return 0
