"""The reference InceptionDWConv3d: split, four depthwise ``F.conv3d``, cat.

This is the released network's computation and the baseline every fused kernel is checked
against (in float64) and timed against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _depthwise(x, weight, bias, groups):
    pad = tuple(k // 2 for k in weight.shape[2:])
    bias = None if bias is None else bias.to(x.dtype)
    return F.conv3d(x, weight.to(x.dtype), bias, padding=pad, groups=groups)


def inception_dwconv3d_reference(x, cube_weight, cube_bias, w_weight, w_bias,
                                 h_weight, h_bias, d_weight, d_bias):
    """y (N, C, D, H, W) from x (N, C, D, H, W); gc = cube_weight.shape[0]. An input with a zero
    size (N = 0 or an empty spatial axis) gives an empty y, as on the fused backends."""
    gc = cube_weight.shape[0]
    identity = x.shape[1] - 4 * gc
    if gc == 0 or x.numel() == 0:
        return x.clone()
    x_id, x_cube, x_w, x_h, x_d = torch.split(x, (identity, gc, gc, gc, gc), dim=1)
    return torch.cat(
        (
            x_id,
            _depthwise(x_cube, cube_weight, cube_bias, gc),
            _depthwise(x_w, w_weight, w_bias, gc),
            _depthwise(x_h, h_weight, h_bias, gc),
            _depthwise(x_d, d_weight, d_bias, gc),
        ),
        dim=1,
    )
