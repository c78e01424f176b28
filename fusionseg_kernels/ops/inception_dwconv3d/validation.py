"""Argument checks shared by every backend: one clear sentence per mistake (SPEC §2)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

WEIGHT_NAMES = ("cube_weight", "w_weight", "h_weight", "d_weight")
BIAS_NAMES = ("cube_bias", "w_bias", "h_bias", "d_bias")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class IdcConfig:
    """What the weights say: gc channels per group, and each group's (kd, kh, kw)."""

    channels: int
    gc: int
    kernels: tuple  # four (kd, kh, kw)

    @property
    def identity(self) -> int:
        return self.channels - 4 * self.gc


def check_args(x, weights, biases) -> IdcConfig:
    """Validates x (N, C, D, H, W), the four weights (gc, 1, kd, kh, kw) and biases (gc,) or None."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"inception_dwconv3d expects a tensor input, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(
            f"inception_dwconv3d expects a 5-D input (N, C, D, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"inception_dwconv3d expects a float32, float64, float16 or bfloat16 input, got {x.dtype}")
    gc = weights[0].shape[0] if weights[0].dim() > 0 else 0
    kernels = []
    for name, w in zip(WEIGHT_NAMES, weights):
        if not isinstance(w, torch.Tensor) or w.dim() != 5 or w.shape[1] != 1:
            shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"inception_dwconv3d: {name} must have the shape of a depthwise Conv3d "
                             f"weight (gc, 1, kd, kh, kw), got {shape}")
        if w.shape[0] != gc:
            raise ValueError(f"inception_dwconv3d: all four weights must have the same number of "
                             f"channels gc; cube_weight has {gc} but {name} has {w.shape[0]}")
        if not w.dtype.is_floating_point:
            raise TypeError(f"inception_dwconv3d: {name} must be floating point, got {w.dtype}")
        if w.device != x.device:
            raise ValueError(f"inception_dwconv3d: {name} is on {w.device} but the input is on {x.device}")
        k = tuple(int(s) for s in w.shape[2:])
        if any(s < 1 or s % 2 == 0 for s in k):
            raise ValueError(f"inception_dwconv3d: kernel sizes must be odd (zero padding k//2 keeps "
                             f"the shape), but {name} has kernel {k}")
        kernels.append(k)
    for name, b in zip(BIAS_NAMES, biases):
        if b is None:
            continue
        if not isinstance(b, torch.Tensor) or tuple(b.shape) != (gc,):
            raise ValueError(f"inception_dwconv3d: {name} must have shape ({gc},), got "
                             f"{tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}")
        if not b.dtype.is_floating_point:
            raise TypeError(f"inception_dwconv3d: {name} must be floating point, got {b.dtype}")
        if b.device != x.device:
            raise ValueError(f"inception_dwconv3d: {name} is on {b.device} but the input is on {x.device}")
    channels = x.shape[1]
    if 4 * gc > channels:
        raise ValueError(f"inception_dwconv3d: the input has {channels} channels, fewer than the "
                         f"4 * gc = {4 * gc} the weights need")
    return IdcConfig(channels=int(channels), gc=int(gc), kernels=tuple(kernels))
