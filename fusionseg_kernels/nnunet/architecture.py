"""Which network a training run or a model folder holds: the one rule, used by this package's
nnU-Net trainers (so by ``nnUNetv2_train`` and ``nnUNetv2_predict``), by the plans rewriter and
by ``fusionseg predict``.

The rule maps (trainer name, plans configuration) to a network of this package and its
constructor arguments:

1. The plans name one of this package's networks (``fusionseg_kernels.models.DualBranchUNet``,
   ``SingleBranchUNet`` or ``PlainConvUNet``, as ``fusionseg nnunet-plans`` writes them): that
   network with the plans' ``arch_kwargs``. A trainer of this package that trains another
   network refuses such plans.
2. The plans name any other network (nnU-Net's own ``PlainConvUNet`` in its default plans, as in
   the release's plans): the dual- and single-branch trainers build the released architecture
   (their class defaults; the plans' sizes are not used, as the released trainer did), the plain
   trainer and every other trainer build ``PlainConvUNet`` from the plans' ``arch_kwargs`` when
   the plans name a ``PlainConvUNet``; anything else is refused.

Trainer names are this package's (`TRAINER_NETWORKS`, with or without the ``_bf16`` suffix); any
other name is treated like nnU-Net's default trainer, which builds what the plans name. Whatever
the rule decides, the plans' patch size must fit the network (divisible by its total stride,
bottleneck above one voxel). Every refusal is a `PlansError` whose sentence is the same
wherever the rule runs.

Importing this module does not import torch or nnunetv2.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from fusionseg_kernels.errors import PlansError

#: the trainer of the released FLARE 2025 model
RELEASED_TRAINER = "nnUNetTrainernew"
#: the suffix of the trainers that run their steps under bfloat16 autocast
BF16_SUFFIX = "_bf16"
#: this package's trainers (without the bf16 suffix) and the network each trains
TRAINER_NETWORKS = {
    RELEASED_TRAINER: "dual",
    "nnUNetTrainerFusionsegSingle": "single",
    "nnUNetTrainerFusionsegPlain": "plain",
}
#: the plans ``network_class_name`` of each network of this package
NETWORK_CLASS_NAMES = {
    "dual": "fusionseg_kernels.models.DualBranchUNet",
    "single": "fusionseg_kernels.models.SingleBranchUNet",
    "plain": "fusionseg_kernels.models.PlainConvUNet",
}
_CLASS_NETWORK = {name.rsplit(".", 1)[-1]: key for key, name in NETWORK_CLASS_NAMES.items()}
_OWN_MODULE_PREFIX = "fusionseg_kernels."
#: the plans keys nnU-Net imports by name (conv, norm, dropout and nonlinearity classes)
REQUIRES_IMPORT = ("conv_op", "norm_op", "dropout_op", "nonlin")


def shipped_trainer_names() -> list[str]:
    """Every trainer this package ships, the bf16 variants included."""
    return [name + suffix for name in TRAINER_NETWORKS for suffix in ("", BF16_SUFFIX)]


def trainer_network(trainer_name: str | None) -> str | None:
    """The network ("dual", "single", "plain") a trainer of this package trains; None for any
    other trainer."""
    if not trainer_name:
        return None
    base = trainer_name[:-len(BF16_SUFFIX)] if trainer_name.endswith(BF16_SUFFIX) else trainer_name
    return TRAINER_NETWORKS.get(base)


def class_name(network: str) -> str:
    """The short class name of a network key: "dual" -> "DualBranchUNet"."""
    return NETWORK_CLASS_NAMES[network].rsplit(".", 1)[-1]


def plans_network(network_class_name: str) -> str | None:
    """The network key when the plans name one of this package's networks, else None."""
    short = network_class_name.rsplit(".", 1)[-1]
    if network_class_name.startswith(_OWN_MODULE_PREFIX) and short in _CLASS_NETWORK:
        return _CLASS_NETWORK[short]
    return None


@dataclass(frozen=True)
class NetworkSpec:
    """A network of this package and its constructor arguments (besides input channels, classes,
    backend and deep supervision), with the reason the rule chose it."""

    network: str                                   # "dual", "single" or "plain"
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def network_class(self) -> type:
        from fusionseg_kernels.models import NETWORKS

        return NETWORKS[self.network]

    @property
    def class_name(self) -> str:
        return class_name(self.network)


def _architecture(configuration: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    if not isinstance(configuration, Mapping):
        raise PlansError(f"a plans configuration must be a JSON object, not {type(configuration).__name__}")
    arch = configuration.get("architecture")
    if not isinstance(arch, Mapping):
        raise PlansError("the plans configuration has no 'architecture' object")
    name = arch.get("network_class_name")
    if not isinstance(name, str) or not name:
        raise PlansError("the plans configuration's architecture has no network_class_name")
    kwargs = arch.get("arch_kwargs")
    if not isinstance(kwargs, Mapping):
        raise PlansError(f"the plans configuration's architecture ({name}) has no 'arch_kwargs' object")
    return name, kwargs


def _kwargs_from_plans(name: str, arch_kwargs: Mapping[str, Any], network: str) -> dict[str, Any]:
    from fusionseg_kernels.models import ArchitectureError, kwargs_from_plans

    try:
        return kwargs_from_plans(arch_kwargs)
    except (ArchitectureError, KeyError, TypeError, ValueError) as err:
        raise PlansError(f"the plans' architecture ({name}) cannot be built as {class_name(network)} "
                         f"({err})") from None


def network_spec(trainer_name: str | None, configuration: Mapping[str, Any]) -> NetworkSpec:
    """The network `trainer_name` builds for this plans configuration (see the module docstring).
    Raises `PlansError` for a combination no trainer of this package would train."""
    name, arch_kwargs = _architecture(configuration)
    short = name.rsplit(".", 1)[-1]
    trained = trainer_network(trainer_name)
    named = plans_network(name)
    if named is not None:
        if trained is not None and trained != named:
            raise PlansError(f"the plans name {class_name(named)} but trainer {trainer_name} trains "
                             f"{class_name(trained)}; use the trainer for {class_name(named)} or rewrite the "
                             f"plans with fusionseg nnunet-plans --network {trained}")
        return NetworkSpec(named, _kwargs_from_plans(name, arch_kwargs, named),
                           f"the plans name {class_name(named)}")
    if trained in ("dual", "single"):
        return NetworkSpec(trained, {}, f"trainer {trainer_name} builds the released {class_name(trained)} "
                                        f"when the plans name {short}")
    if trained == "plain" or short == "PlainConvUNet":
        return NetworkSpec("plain", _kwargs_from_plans(name, arch_kwargs, "plain"),
                           f"PlainConvUNet with the sizes of the plans ({short})")
    raise PlansError(f"the plans name {name}, which trainer {trainer_name} would build and this package cannot; "
                     f"rewrite the plans with fusionseg nnunet-plans or train with one of "
                     f"{', '.join(TRAINER_NETWORKS)}")


def check_patch_size(network, patch_size: Sequence[int]) -> None:
    """Raises `PlansError` when the plans' patch size does not fit the network."""
    patch = tuple(int(p) for p in patch_size)
    cls = type(network).__name__
    if len(patch) != 3:
        raise PlansError(f"the plans' patch size {list(patch)} is not 3-D; {cls} is a 3-D network")
    fitting = network.suggest_input_size(patch)
    if fitting != patch:
        raise PlansError(f"patch size {list(patch)} does not fit {cls} (total stride "
                         f"{list(network.total_stride)}, smallest sizes "
                         f"{[list(s) for s in network.min_input_sizes]}); rewrite the plans with "
                         f"fusionseg nnunet-plans --patch {' '.join(map(str, fitting))}")


def build_network(spec: NetworkSpec, input_channels: int, num_classes: int, backend: str = "auto",
                  deep_supervision: bool = False, patch_size: Sequence[int] | None = None):
    """The network of `spec`; checks that `patch_size` (when given) fits it."""
    from fusionseg_kernels.models import ArchitectureError

    try:
        network = spec.network_class(input_channels=input_channels, num_classes=num_classes, backend=backend,
                                     deep_supervision=deep_supervision, **dict(spec.kwargs))
    except ArchitectureError as err:
        raise PlansError(f"the plans' architecture cannot be built as {spec.class_name} ({err})") from None
    if patch_size is not None:
        check_patch_size(network, patch_size)
    return network


def released_arch_kwargs(network: str = "dual", features_per_stage: Sequence[int] | None = None,
                         strides: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """nnU-Net plans ``arch_kwargs`` describing a network of this package with its class defaults
    (the released architecture for "dual" and "single"), optionally with other features and
    strides (one per stage)."""
    from fusionseg_kernels.models import NETWORKS

    d = NETWORKS[network].defaults
    features = [int(f) for f in (features_per_stage if features_per_stage is not None else d["features_per_stage"])]
    strides = [[int(s) for s in st] for st in (strides if strides is not None else d["strides"])]
    n = len(features)
    if len(strides) != n:
        raise PlansError(f"{n} features_per_stage but {len(strides)} strides")
    return {
        "n_stages": n,
        "features_per_stage": features,
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[int(d["kernel_sizes"])] * 3 for _ in range(n)],
        "strides": strides,
        "n_conv_per_stage": [int(d["n_conv_per_stage"])] * n,
        "n_conv_per_stage_decoder": [int(d["n_conv_per_stage_decoder"])] * (n - 1),
        "conv_bias": bool(d["conv_bias"]),
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": float(d["norm_eps"]), "affine": bool(d["norm_affine"])},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"negative_slope": float(d["negative_slope"]), "inplace": True},
    }


def architecture_entry(network: str, arch_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A plans ``architecture`` object naming a network of this package."""
    return {"network_class_name": NETWORK_CLASS_NAMES[network], "arch_kwargs": dict(arch_kwargs),
            "_kw_requires_import": list(REQUIRES_IMPORT)}
