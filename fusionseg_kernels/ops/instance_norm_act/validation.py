"""Argument checks of instance_norm_leaky_relu: the sentences and exception types of the C++ op
(csrc/ops/instance_norm_act.cpp), so every backend refuses a bad call the same way."""
from __future__ import annotations

import math

import torch

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_FLOAT_NAMES = "float32, float64, float16 or bfloat16"


def check_args(x, weight, bias, eps, negative_slope) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"instance_norm_leaky_relu expects a tensor input, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"instance_norm_leaky_relu expects a 5-D input (N, C, D, H, W), got shape {list(x.shape)}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"instance_norm_leaky_relu expects a {_FLOAT_NAMES} input, got {x.dtype}")
    if math.prod(x.shape[2:]) <= 1 and x.numel() != 0:
        raise ValueError(f"instance_norm_leaky_relu: expected more than 1 spatial element per channel, got input "
                         f"shape {list(x.shape)}")
    if not eps > 0:
        raise ValueError(f"instance_norm_leaky_relu: eps must be positive, got {eps}")
    if not math.isfinite(negative_slope):
        raise ValueError(f"instance_norm_leaky_relu: negative_slope must be finite, got {negative_slope}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"instance_norm_leaky_relu: {name} must be a tensor or None, got {type(p).__name__}")
        if p.dim() != 1 or p.shape[0] != x.shape[1]:
            raise ValueError(f"instance_norm_leaky_relu: {name} must have shape [{x.shape[1]}], got shape "
                             f"{list(p.shape)}")
        if p.dtype not in _FLOATS:
            raise TypeError(f"instance_norm_leaky_relu: {name} must be {_FLOAT_NAMES}, got {p.dtype}")
        if p.device != x.device:
            raise ValueError(f"instance_norm_leaky_relu: {name} is on {p.device} but the input is on {x.device}")
