"""Rewrites an nnU-Net v2 plans file so that one configuration's network is one of this package's.

nnU-Net builds a configuration's network from ``plans["configurations"][c]["architecture"]``:
``network_class_name`` (located with ``pydoc.locate``) called with the dataset's channel and
class counts, ``deep_supervision`` and ``arch_kwargs``. `rewrite_plans` copies a plans file
under a new plans identifier, points that configuration at ``fusionseg_kernels.models.<Network>``
with matching ``arch_kwargs`` and keeps its ``data_identifier``, so the data nnU-Net has already
preprocessed for the source plans is used as it is (same spacing and normalization).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Sequence

from fusionseg_kernels import atomic
from fusionseg_kernels.errors import FusionsegError

NETWORK_CLASS_NAMES = {
    "dual": "fusionseg_kernels.models.DualBranchUNet",
    "single": "fusionseg_kernels.models.SingleBranchUNet",
    "plain": "fusionseg_kernels.models.PlainConvUNet",
}
DEFAULT_PLANS_NAME = "nnUNetPlans_fusionseg"
_REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


class PlansError(FusionsegError, ValueError):
    """A plans file that cannot be found, read or rewritten as asked."""


def _released_arch_kwargs(network: str) -> dict[str, Any]:
    from fusionseg_kernels.models import NETWORKS

    d = NETWORKS[network].defaults
    n = len(d["features_per_stage"])
    return {
        "n_stages": n,
        "features_per_stage": list(d["features_per_stage"]),
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[d["kernel_sizes"]] * 3] * n,
        "strides": [list(s) for s in d["strides"]],
        "n_conv_per_stage": [d["n_conv_per_stage"]] * n,
        "n_conv_per_stage_decoder": [d["n_conv_per_stage_decoder"]] * (n - 1),
        "conv_bias": d["conv_bias"],
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": d["norm_eps"], "affine": d["norm_affine"]},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"negative_slope": d["negative_slope"], "inplace": True},
    }


def fusionseg_architecture(network: str = "dual", features: Sequence[int] | None = None,
                           source_architecture: dict | None = None) -> dict[str, Any]:
    """An nnU-Net plans ``architecture`` entry for one of the networks ("dual", "single", "plain").

    "dual" and "single" get the released architecture (5 stages, 32…320 features, strides
    (1,1,1), (2,2,2) ×3, (1,2,2)). "plain" takes the ``arch_kwargs`` of `source_architecture` (what
    nnU-Net planned for the dataset) when it is nnU-Net's PlainConvUNet, else the FLARE plan.
    `features` replaces ``features_per_stage`` (one per stage)."""
    if network not in NETWORK_CLASS_NAMES:
        raise PlansError(f"unknown network {network!r}; choose one of {', '.join(NETWORK_CLASS_NAMES)}")
    source_kwargs = (source_architecture or {}).get("arch_kwargs")
    source_name = str((source_architecture or {}).get("network_class_name", ""))
    if network == "plain" and source_kwargs and source_name.rsplit(".", 1)[-1] == "PlainConvUNet":
        arch_kwargs = copy.deepcopy(source_kwargs)
    else:
        arch_kwargs = _released_arch_kwargs(network)
    if features is not None:
        features = [int(f) for f in features]
        if len(features) != len(arch_kwargs["features_per_stage"]):
            raise PlansError(f"--features needs {len(arch_kwargs['features_per_stage'])} values (one per stage), got {len(features)}")
        arch_kwargs["features_per_stage"] = features
    return {"network_class_name": NETWORK_CLASS_NAMES[network], "arch_kwargs": arch_kwargs,
            "_kw_requires_import": list(_REQUIRES_IMPORT)}


def resolve_plans_file(dataset: str | os.PathLike, source_plans: str = "nnUNetPlans") -> Path:
    """The plans file meant by `dataset`: a plans .json file, a preprocessed dataset folder, or a
    dataset name or id looked up in ``$nnUNet_preprocessed``."""
    path = Path(dataset)
    if path.suffix == ".json":
        if not path.is_file():
            raise PlansError(f"plans file {path} does not exist")
        return path
    if path.is_dir():
        folder = path
    else:
        root = os.environ.get("nnUNet_preprocessed")
        if not root:
            raise PlansError(f"{dataset} is neither a plans file nor a folder, and nnUNet_preprocessed is not set "
                             f"to look it up as a dataset name or id")
        name = str(dataset)
        if name.isdigit():
            matches = sorted(Path(root).glob(f"Dataset{int(name):03d}_*"))
            if not matches:
                raise PlansError(f"no dataset with id {name} in nnUNet_preprocessed={root}")
            folder = matches[0]
        else:
            folder = Path(root) / name
    plans_file = folder / f"{source_plans}.json"
    if not plans_file.is_file():
        raise PlansError(f"{plans_file} does not exist (run nnUNetv2_plan_and_preprocess for this dataset first)")
    return plans_file


def _dataset_channels_and_classes(plans_file: Path) -> tuple[int, int]:
    dataset_json = plans_file.parent / "dataset.json"
    try:
        info = json.loads(dataset_json.read_text())
        return max(1, len(info["channel_names"])), max(2, len(info["labels"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 1, 2


def rewrite_plans(dataset: str | os.PathLike, network: str = "dual", plans_name: str = DEFAULT_PLANS_NAME,
                  source_plans: str = "nnUNetPlans", configuration: str = "3d_fullres",
                  patch_size: Sequence[int] | None = None, features: Sequence[int] | None = None,
                  batch_size: int | None = None) -> Path:
    """Writes ``<plans_name>.json`` beside the source plans and returns its path.

    The copy has ``plans_name`` = `plans_name`; its `configuration` gets the network's
    architecture (`fusionseg_architecture`), and optionally a new patch size and batch size.
    The network is built (on the meta device) to check the architecture, and the patch size
    must fit it (divisible by its total stride, bottleneck above one voxel); a patch that does
    not raises `PlansError` naming one that does. The file is written atomically (a temporary
    file in the same folder, then renamed); other configurations are copied unchanged.
    """
    import torch

    from fusionseg_kernels.models import NETWORKS

    plans_file = resolve_plans_file(dataset, source_plans)
    try:
        plans = json.loads(plans_file.read_text())
    except ValueError as err:
        raise PlansError(f"{plans_file} is not valid JSON ({err})") from None
    if plans_name == plans_file.stem:
        raise PlansError(f"the new plans identifier must differ from the source's ({plans_name})")
    configs = plans.get("configurations", {})
    if configuration not in configs:
        raise PlansError(f"{plans_file} has no configuration {configuration!r} (it has {', '.join(configs)})")
    new = copy.deepcopy(plans)
    new["plans_name"] = plans_name
    config = new["configurations"][configuration]
    if "inherits_from" in config:
        raise PlansError(f"configuration {configuration!r} inherits from {config['inherits_from']!r}; rewrite that one")
    config["architecture"] = fusionseg_architecture(network, features, config.get("architecture"))
    if patch_size is not None:
        config["patch_size"] = [int(p) for p in patch_size]
    if batch_size is not None:
        if int(batch_size) < 1:
            raise PlansError(f"batch size must be positive, got {batch_size}")
        config["batch_size"] = int(batch_size)
    patch = tuple(int(p) for p in config.get("patch_size", ()))
    if len(patch) != 3:
        raise PlansError(f"configuration {configuration!r} has patch size {list(patch)}; these networks are 3-D")
    in_channels, n_classes = _dataset_channels_and_classes(plans_file)
    cls = NETWORKS[network]
    with torch.device("meta"):
        model = cls.from_plans(config["architecture"], in_channels, n_classes, backend="reference")
    fitting = model.suggest_input_size(patch)
    if fitting != patch:
        raise PlansError(f"patch size {list(patch)} does not fit {cls.__name__} (total stride "
                         f"{list(model.total_stride)}, smallest sizes {[list(s) for s in model.min_input_sizes]}); "
                         f"pass --patch {' '.join(map(str, fitting))} or another fitting size")
    target = plans_file.parent / f"{plans_name}.json"
    atomic.write_json(target, new, indent=4)
    return target
