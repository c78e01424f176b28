"""Argument checks of inception_dwconv3d: one sentence per mistake, ValueError or TypeError.

The C++ op pair (csrc/ops/inception_dwconv3d.cpp) checks its arguments itself, in the same order
and with the same sentences, raising the same exception types; `tests/ops/test_errors.py` feeds one
table of bad inputs to every backend and requires identical errors. Shapes are written as lists
("[1, 2, 3]") and dtypes as torch names ("torch.int64") on both sides.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

WEIGHT_NAMES = ("cube_weight", "w_weight", "h_weight", "d_weight")
BIAS_NAMES = ("cube_bias", "w_bias", "h_bias", "d_bias")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_FLOATS = "float32, float64, float16 or bfloat16"


@dataclass(frozen=True)
class IdcConfig:
    """What the weights say: gc channels per group, and each group's (kd, kh, kw)."""

    channels: int
    gc: int
    kernels: tuple  # four (kd, kh, kw)

    @property
    def identity(self) -> int:
        return self.channels - 4 * self.gc


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def all_tensors(x, weights, biases) -> bool:
    """Whether x and the weights are tensors and every bias a tensor or None (cheap pre-check
    before handing the arguments to the C++ op, whose schema would reject them with its own words)."""
    return (isinstance(x, torch.Tensor) and all(isinstance(w, torch.Tensor) for w in weights)
            and all(b is None or isinstance(b, torch.Tensor) for b in biases))


def check_types(x, weights, biases) -> None:
    """TypeError unless x and the weights are tensors and each bias is a tensor or None."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"inception_dwconv3d expects a tensor input x, got {type(x).__name__}")
    for name, w in zip(WEIGHT_NAMES, weights):
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"inception_dwconv3d: {name} must be a tensor, got {type(w).__name__}")
    for name, b in zip(BIAS_NAMES, biases):
        if b is not None and not isinstance(b, torch.Tensor):
            raise TypeError(f"inception_dwconv3d: {name} must be a tensor or None, got {type(b).__name__}")


def check_args(x, weights, biases) -> IdcConfig:
    """Validates x (N, C, D, H, W), the four weights (gc, 1, kd, kh, kw) and biases (gc,) or None.

    Sizes of zero are allowed (N = 0, a zero spatial extent): the result is empty like x."""
    check_types(x, weights, biases)
    if x.dim() != 5:
        raise ValueError(f"inception_dwconv3d expects a 5-D input (N, C, D, H, W), got shape {_shape(x)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"inception_dwconv3d expects a {_FLOATS} input, got {x.dtype}")
    gc = weights[0].shape[0] if weights[0].dim() > 0 else 0
    kernels = []
    for name, w in zip(WEIGHT_NAMES, weights):
        if w.dim() != 5 or w.shape[1] != 1:
            raise ValueError(f"inception_dwconv3d: {name} must have the shape of a depthwise Conv3d "
                             f"weight (gc, 1, kd, kh, kw), got shape {_shape(w)}")
        if w.shape[0] != gc:
            raise ValueError(f"inception_dwconv3d: all four weights must have the same number of "
                             f"channels gc; cube_weight has {gc} but {name} has {w.shape[0]}")
        if w.dtype not in FLOAT_DTYPES:
            raise TypeError(f"inception_dwconv3d: {name} must be {_FLOATS}, got {w.dtype}")
        if w.device != x.device:
            raise ValueError(f"inception_dwconv3d: {name} is on {w.device} but the input is on {x.device}")
        k = [int(s) for s in w.shape[2:]]
        if any(s < 1 or s % 2 == 0 for s in k):
            raise ValueError(f"inception_dwconv3d: kernel sizes must be odd (zero padding k//2 keeps "
                             f"the shape), but {name} has kernel {k}")
        kernels.append(tuple(k))
    for name, b in zip(BIAS_NAMES, biases):
        if b is None:
            continue
        if tuple(b.shape) != (gc,):
            raise ValueError(f"inception_dwconv3d: {name} must have shape [{gc}], got shape {_shape(b)}")
        if b.dtype not in FLOAT_DTYPES:
            raise TypeError(f"inception_dwconv3d: {name} must be {_FLOATS}, got {b.dtype}")
        if b.device != x.device:
            raise ValueError(f"inception_dwconv3d: {name} is on {b.device} but the input is on {x.device}")
    channels = x.shape[1]
    if 4 * gc > channels:
        raise ValueError(f"inception_dwconv3d: the input has {channels} channels, fewer than the "
                         f"4 * gc = {4 * gc} the weights need")
    return IdcConfig(channels=int(channels), gc=int(gc), kernels=tuple(kernels))
