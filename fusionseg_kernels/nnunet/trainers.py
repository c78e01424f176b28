"""nnU-Net v2 trainers for the three networks (found through ``nnUNet_extTrainer``, see `env`).

    nnUNetTrainernew                  the released network (DualBranchUNet) and the release's recipe:
                                      AdamW (lr 8e-4, weight decay 0.01, eps 1e-5), poly learning rate
                                      with exponent 1, 2000 epochs x 250 iterations, gradient clipping
                                      at 12, Dice + cross-entropy, no deep supervision
    nnUNetTrainerFusionsegSingle      the same recipe with SingleBranchUNet
    nnUNetTrainerFusionsegPlain       the same recipe with PlainConvUNet (nnU-Net's planned U-Net)
    <each of them>_bf16               training and validation steps under bfloat16 autocast (no
                                      gradient scaler), on CUDA and on the CPU

The network is what `fusionseg_kernels.nnunet.architecture` decides for the trainer's name and
the plans (the same rule ``fusionseg predict`` applies to a model folder): the plans' network
when they name one of this package's (``fusionseg nnunet-plans``), else the released
architecture for the dual- and single-branch trainers and PlainConvUNet with the plans' sizes for
the plain one. The InceptionDWConv3d backend is ``$FUSIONSEG_BACKEND`` (default "auto").

Checkpoints hold the network's weights in the released form (880 aliased keys for the released
network), so a checkpoint written here loads into the original code and the released checkpoint
loads here — in this package, in nnU-Net's predictor and when continuing training.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch._dynamo import OptimizedModule

from .architecture import build_network, network_spec
from .env import backend_from_env, threads_from_env, training_length_from_env

__all__ = ["nnUNetTrainernew", "nnUNetTrainernew_bf16", "nnUNetTrainerFusionsegSingle",
           "nnUNetTrainerFusionsegSingle_bf16", "nnUNetTrainerFusionsegPlain", "nnUNetTrainerFusionsegPlain_bf16",
           "unwrap_network"]


def unwrap_network(network: torch.nn.Module) -> torch.nn.Module:
    """The network inside DistributedDataParallel and torch.compile wrappers."""
    if isinstance(network, torch.nn.parallel.DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


class _FusionsegTrainer(nnUNetTrainer):
    """The released recipe on top of nnU-Net's trainer (data loading, augmentation, Dice + CE
    loss, foreground oversampling 0.33, validation, checkpoints are nnU-Net's)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 8e-4
        self.weight_decay = 0.01
        self.adamw_eps = 1e-5
        self.poly_exponent = 1.0
        self.num_epochs = 2000
        self.num_iterations_per_epoch = 250
        self.enable_deep_supervision = False
        for attr, value in training_length_from_env().items():
            setattr(self, attr, value)
        threads = threads_from_env()
        if threads is not None:
            torch.set_num_threads(threads)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, *more, enable_deep_supervision: bool = True) -> torch.nn.Module:
        """nnU-Net's hook, at training and at inference (``nnUNetv2_predict``): the network the
        architecture rule gives for this trainer's name and the plans, with the backend of
        ``$FUSIONSEG_BACKEND``. Accepts nnU-Net >= 2.8's arguments (plans_manager,
        configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision)
        and the older (architecture_class_name, arch_init_kwargs, arch_init_kwargs_req_import,
        num_input_channels, num_output_channels, enable_deep_supervision)."""
        if isinstance(plans_manager, str):
            # the pre-2.8 signature (class name, arch_kwargs, req_import, in, out[, deep supervision]):
            # the arguments sit one place later, and there is no patch size to check
            if not more:
                raise TypeError("build_network_architecture needs num_output_channels")
            configuration: dict[str, Any] = {"architecture": {"network_class_name": plans_manager,
                                                              "arch_kwargs": dict(configuration_manager)}}
            in_channels, out_channels = num_output_channels, more[0]
            deep_supervision = more[1] if len(more) > 1 else enable_deep_supervision
            patch = None
        else:
            configuration = configuration_manager.configuration
            in_channels, out_channels = num_input_channels, num_output_channels
            deep_supervision = more[0] if more else enable_deep_supervision
            patch = configuration_manager.patch_size
        spec = network_spec(cls.__name__, configuration)
        return build_network(spec, in_channels, out_channels, backend=backend_from_env(),
                             deep_supervision=bool(deep_supervision), patch_size=patch)

    def configure_optimizers(self):
        network = unwrap_network(self.network)
        # Heads whose output is not used get no gradient; freezing them keeps DDP from waiting for
        # their gradients. AdamW still holds every parameter (same indices as the release's
        # optimizer state) and, as before, never updates a parameter without a gradient.
        for head in network.decoder.unused_heads():
            head.requires_grad_(False)
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr,
                                      weight_decay=self.weight_decay, eps=self.adamw_eps)
        lr_scheduler = PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=self.poly_exponent)
        return optimizer, lr_scheduler

    def set_deep_supervision_enabled(self, enabled: bool):
        # nnU-Net switches deep supervision back on after its final validation; a trainer without
        # it keeps it off.
        super().set_deep_supervision_enabled(bool(enabled) and self.enable_deep_supervision)

    def save_checkpoint(self, filename: str) -> None:
        network = unwrap_network(self.network)
        # nnU-Net saves network.state_dict(); the released form keeps checkpoints interchangeable
        # with the release's.
        released = network.released_state_dict()
        network.state_dict = lambda *args, **kwargs: released
        try:
            super().save_checkpoint(filename)
        finally:
            del network.state_dict


class _BFloat16Autocast:
    """Training and validation steps under torch.autocast(bfloat16) on the trainer's device, without
    a gradient scaler (bfloat16 has float32's exponent range). nnU-Net's own steps autocast to
    float16 on CUDA only; on the CPU they run in float32."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.grad_scaler = None

    def _autocast(self):
        if self.device.type not in ("cuda", "cpu"):
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_step(self, batch: dict) -> dict:
        with self._autocast():
            return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        with self._autocast():
            return super().validation_step(batch)


class nnUNetTrainernew(_FusionsegTrainer):
    """The released trainer: DualBranchUNet with the release's recipe."""


class nnUNetTrainerFusionsegSingle(_FusionsegTrainer):
    """SingleBranchUNet (the paper's ablation) with the release's recipe."""


class nnUNetTrainerFusionsegPlain(_FusionsegTrainer):
    """PlainConvUNet (nnU-Net's planned U-Net, built from this package) with the release's recipe."""


class nnUNetTrainernew_bf16(_BFloat16Autocast, nnUNetTrainernew):
    """nnUNetTrainernew with bfloat16 autocast."""


class nnUNetTrainerFusionsegSingle_bf16(_BFloat16Autocast, nnUNetTrainerFusionsegSingle):
    """nnUNetTrainerFusionsegSingle with bfloat16 autocast."""


class nnUNetTrainerFusionsegPlain_bf16(_BFloat16Autocast, nnUNetTrainerFusionsegPlain):
    """nnUNetTrainerFusionsegPlain with bfloat16 autocast."""
