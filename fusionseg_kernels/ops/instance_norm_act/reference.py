"""The oracle: PyTorch's InstanceNorm (input statistics, optional affine) then LeakyReLU."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def instance_norm_leaky_relu_reference(x: torch.Tensor, weight: torch.Tensor | None = None,
                                       bias: torch.Tensor | None = None, eps: float = 1e-5,
                                       negative_slope: float = 0.01) -> torch.Tensor:
    """``F.leaky_relu(F.instance_norm(x, weight=weight, bias=bias, eps=eps), negative_slope)``;
    a slope of 1 is no activation."""
    y = F.instance_norm(x, weight=weight, bias=bias, use_input_stats=True, eps=eps)
    return y if negative_slope == 1.0 else F.leaky_relu(y, negative_slope)
