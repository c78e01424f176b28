"""The public function: validates, picks a backend, calls it."""
from __future__ import annotations

import torch

from . import cpp_op  # noqa: F401  (registers fake kernels, autograd and FLOP formulas)
from .dispatch import resolve_backend
from .reference import inception_dwconv3d_reference
from .validation import check_args


def inception_dwconv3d(x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias,
                       d_weight, d_bias, *, backend: str = "auto") -> torch.Tensor:
    """InceptionDWConv3d (SPEC §2): identity, a cube and three band depthwise convs over channel groups.

    Args:
        x: (N, C, D, H, W), float32/float64/float16/bfloat16.
        cube_weight, w_weight, h_weight, d_weight: (gc, 1, kd, kh, kw) depthwise weights; gc is
            taken from them, the first C - 4*gc channels are copied unchanged. Odd kernel sizes.
        cube_bias, w_bias, h_bias, d_bias: (gc,) or None.
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        y with x's shape and dtype (weights are cast to x's dtype; accumulation in >= float32).
    """
    weights = (cube_weight, w_weight, h_weight, d_weight)
    biases = (cube_bias, w_bias, h_bias, d_bias)
    if not isinstance(x, torch.Tensor):
        check_args(x, weights, biases)  # raises
    name = resolve_backend(backend, x)
    if name in ("cpu", "cuda") and not torch.compiler.is_compiling():
        # The C++ op checks every argument itself (same sentences); the Python checks run only
        # to turn its failure into a ValueError/TypeError, keeping ~50 us off every call.
        try:
            return torch.ops.fusionseg.inception_dwconv3d_forward(
                x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias, d_weight, d_bias)
        except RuntimeError:
            check_args(x, weights, biases)
            raise
    check_args(x, weights, biases)
    if name == "reference":
        return inception_dwconv3d_reference(x, cube_weight, cube_bias, w_weight, w_bias,
                                            h_weight, h_bias, d_weight, d_bias)
    if name in ("cpu", "cuda"):
        return torch.ops.fusionseg.inception_dwconv3d_forward(
            x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias, d_weight, d_bias)
    from .triton_impl import inception_dwconv3d_triton

    return inception_dwconv3d_triton(x, cube_weight, cube_bias, w_weight, w_bias,
                                     h_weight, h_bias, d_weight, d_bias)
