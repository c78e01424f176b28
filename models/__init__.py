"""Networks built on the fused InceptionDWConv3d (importable as ``fusionseg_kernels.models``).

    DualBranchUNet      the released FLARE 2025 network, 8,227,320 parameters
    SingleBranchUNet    the paper's single-branch ablation, 8,757,032 parameters
    PlainConvUNet       nnU-Net's default 3D U-Net for this dataset, 30,785,994 parameters
    load_nnunet_checkpoint(path)   an nnU-Net checkpoint_*.pth, read safely, as a network

Each network has ``set_backend()``, ``released_state_dict()``, ``load_released_state_dict()``
(``load_state_dict()`` accepts the released form too), ``from_plans()`` and nnU-Net's constructor
keywords, so nnU-Net's plans can name them (``fusionseg_kernels.models.DualBranchUNet``).
"""
from .blocks import ConvNormAct, DualBranchBlock, ResidualBranch, StackedConvs, UNetDecoder
from .checkpoint import (CHECKPOINT_SAFE_GLOBALS, infer_network_from_state_dict, load_nnunet_checkpoint,
                         read_nnunet_checkpoint)
from .networks import (NETWORKS, PLAIN_FEATURES, PLAIN_STRIDES, RELEASED_FEATURES, RELEASED_STRIDES,
                       ArchitectureError, DualBranchUNet, InputSizeError, PlainConvUNet, SingleBranchUNet,
                       kwargs_from_plans)
from .released import ReleasedStateDictError, released_pairs

__all__ = [
    "ArchitectureError", "CHECKPOINT_SAFE_GLOBALS", "ConvNormAct", "DualBranchBlock", "DualBranchUNet",
    "InputSizeError",
    "NETWORKS", "PLAIN_FEATURES", "PLAIN_STRIDES", "PlainConvUNet", "RELEASED_FEATURES", "RELEASED_STRIDES",
    "ReleasedStateDictError", "ResidualBranch", "SingleBranchUNet", "StackedConvs", "UNetDecoder",
    "infer_network_from_state_dict", "kwargs_from_plans", "load_nnunet_checkpoint",
    "read_nnunet_checkpoint", "released_pairs",
]
