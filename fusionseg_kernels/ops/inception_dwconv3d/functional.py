"""The public function: checks, picks a backend, calls it."""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as forward_ad

from . import cpp_op  # noqa: F401  (registers the C++ op pair's fake kernels, autograd, FLOPs, autocast)
from .dispatch import resolve_backend
from .reference import inception_dwconv3d_reference
from .registration import autocast_input
from .validation import all_tensors, check_args, check_types


def _has_forward_tangent(tensors) -> bool:
    """Whether forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) tracks a tangent of
    any argument. The fused op pairs have no forward-mode formula, so such calls run on the
    reference's PyTorch formulas instead of returning a zero tangent."""
    if forward_ad._current_level < 0 and torch._C._functorch.maybe_current_level() is None:
        return False
    return any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def inception_dwconv3d(x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias,
                       d_weight, d_bias, *, backend: str = "auto") -> torch.Tensor:
    """InceptionDWConv3d: identity, a cube and three band depthwise convs over channel groups.

    Args:
        x: (N, C, D, H, W), float32/float64/float16/bfloat16.
        cube_weight, w_weight, h_weight, d_weight: (gc, 1, kd, kh, kw) depthwise weights; gc is
            taken from them, the first C - 4*gc channels are copied unchanged. Odd kernel sizes.
        cube_bias, w_bias, h_bias, d_bias: (gc,) or None.
        backend: "auto", "reference", "cpu", "cuda" or "triton" (see `explain_backend`).

    Returns:
        y with x's shape and dtype (weights are cast to x's dtype; accumulation in >= float32).
        Under autocast, y is in the autocast dtype on every backend (`registration.autocast_input`).

    Raises ValueError or TypeError (one sentence, the same on every backend) for bad arguments,
    BackendUnavailableError when the backend cannot run here. Second-order gradients
    (create_graph=True) and forward-mode AD are exact on every backend: they use PyTorch's own
    convolution formulas.
    """
    weights = (cube_weight, w_weight, h_weight, d_weight)
    biases = (cube_bias, w_bias, h_bias, d_bias)
    if not all_tensors(x, weights, biases):
        check_types(x, weights, biases)  # raises TypeError
    if not torch.compiler.is_compiling() and _has_forward_tangent((x, *weights, *biases)):
        name = "reference"
    else:
        name = resolve_backend(backend, x)
    if name in ("cpu", "cuda"):
        # The C++ op checks its arguments itself (same sentences and exception types).
        return torch.ops.fusionseg.inception_dwconv3d_forward(
            x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias, d_weight, d_bias)
    check_args(x, weights, biases)
    if name == "reference":
        if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
            x = autocast_input(x, x.device.type)
            with torch.autocast(x.device.type, enabled=False):
                return inception_dwconv3d_reference(x, cube_weight, cube_bias, w_weight, w_bias,
                                                    h_weight, h_bias, d_weight, d_bias)
        return inception_dwconv3d_reference(x, cube_weight, cube_bias, w_weight, w_bias,
                                            h_weight, h_bias, d_weight, d_bias)
    from .triton_impl import inception_dwconv3d_triton

    return inception_dwconv3d_triton(x, cube_weight, cube_bias, w_weight, w_bias,
                                     h_weight, h_bias, d_weight, d_bias)
