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
import re
from pathlib import Path
from typing import Any, Sequence

from fusionseg_kernels import atomic, config
from fusionseg_kernels.errors import PlansError

from .architecture import (NETWORK_CLASS_NAMES, architecture_entry, build_network, network_spec, plans_network,
                           released_arch_kwargs)

DEFAULT_PLANS_NAME = "nnUNetPlans_fusionseg"
# nnU-Net uses a plans identifier as a file name in the dataset's folder and in result folder names
_PLANS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_plans_name(name: str) -> str:
    """A plans identifier is a name, not a path: letters, digits, ``_``, ``-`` and ``.``, not
    ``..`` and no separators (so the plans are written beside their source and nowhere else)."""
    if not isinstance(name, str) or not _PLANS_NAME.fullmatch(name) or ".." in name:
        raise PlansError(f"the plans name {name!r} is not a plain name (letters, digits, _, - and ., "
                         f"no path separators or ..)")
    return name


def fusionseg_architecture(network: str = "dual", features: Sequence[int] | None = None,
                           source_architecture: dict | None = None) -> dict[str, Any]:
    """An nnU-Net plans ``architecture`` entry for one of the networks ("dual", "single", "plain").

    "dual" and "single" get the released architecture (5 stages, 32…320 features, strides
    (1,1,1), (2,2,2) ×3, (1,2,2)). "plain" takes the ``arch_kwargs`` of `source_architecture` (what
    nnU-Net planned for the dataset) when it names a PlainConvUNet, else the FLARE plan.
    `features` replaces ``features_per_stage`` (one per stage)."""
    if network not in NETWORK_CLASS_NAMES:
        raise PlansError(f"unknown network {network!r}; choose one of {', '.join(NETWORK_CLASS_NAMES)}")
    if source_architecture is not None and not isinstance(source_architecture, dict):
        raise PlansError(f"the source plans' 'architecture' is a {type(source_architecture).__name__}, not a JSON "
                         f"object")
    source = source_architecture or {}
    source_kwargs = source.get("arch_kwargs")
    source_name = str(source.get("network_class_name", ""))
    planned_plain = source_name.rsplit(".", 1)[-1] == "PlainConvUNet" and plans_network(source_name) is None
    if network == "plain" and isinstance(source_kwargs, dict) and planned_plain:
        arch_kwargs = copy.deepcopy(source_kwargs)
    else:
        arch_kwargs = released_arch_kwargs(network)
    if features is not None:
        features = [int(f) for f in features]
        if len(features) != len(arch_kwargs["features_per_stage"]):
            needed = len(arch_kwargs["features_per_stage"])
            raise PlansError(f"--features needs {needed} values (one per stage), got {len(features)}")
        arch_kwargs["features_per_stage"] = features
    return architecture_entry(network, arch_kwargs)


def resolve_plans_file(dataset: str | Path, source_plans: str = "nnUNetPlans") -> Path:
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
        root = config.text("nnUNet_preprocessed")
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


def rewrite_plans(dataset: str | Path, network: str = "dual", plans_name: str = DEFAULT_PLANS_NAME,
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

    check_plans_name(plans_name)
    plans_file = resolve_plans_file(dataset, source_plans)
    try:
        plans = json.loads(plans_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise PlansError(f"{plans_file} is not valid JSON ({err})") from None
    if not isinstance(plans, dict):
        raise PlansError(f"{plans_file} does not hold a JSON object (it holds a {type(plans).__name__})")
    if plans_name == plans_file.stem:
        raise PlansError(f"the new plans identifier must differ from the source's ({plans_name})")
    configs = plans.get("configurations")
    if not isinstance(configs, dict):
        raise PlansError(f"{plans_file}: 'configurations' is not a JSON object")
    if configuration not in configs:
        raise PlansError(f"{plans_file} has no configuration {configuration!r} (it has {', '.join(configs)})")
    if not isinstance(configs[configuration], dict):
        raise PlansError(f"{plans_file}: configuration {configuration!r} is not a JSON object")
    new = copy.deepcopy(plans)
    new["plans_name"] = plans_name
    entry = new["configurations"][configuration]
    if "inherits_from" in entry:
        raise PlansError(f"configuration {configuration!r} inherits from {entry['inherits_from']!r}; rewrite that one")
    try:
        entry["architecture"] = fusionseg_architecture(network, features, entry.get("architecture"))
    except PlansError as err:
        raise PlansError(f"{plans_file}, configuration {configuration!r}: {err}") from None
    if patch_size is not None:
        entry["patch_size"] = [int(p) for p in patch_size]
    if batch_size is not None:
        if int(batch_size) < 1:
            raise PlansError(f"batch size must be positive, got {batch_size}")
        entry["batch_size"] = int(batch_size)
    patch = entry.get("patch_size")
    if not isinstance(patch, list) or len(patch) != 3:
        raise PlansError(f"configuration {configuration!r} has patch size {patch}; these networks are 3-D")
    in_channels, n_classes = _dataset_channels_and_classes(plans_file)
    spec = network_spec(None, entry)
    with torch.device("meta"):  # the same checks a trainer makes, without allocating weights
        build_network(spec, in_channels, n_classes, backend="reference", patch_size=patch)
    target = plans_file.parent / f"{plans_name}.json"
    atomic.write_json(target, new, indent=4)
    return target
