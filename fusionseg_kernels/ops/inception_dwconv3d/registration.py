"""How an inception_dwconv3d op pair is registered with PyTorch — once, for both pairs.

The package has two op pairs with the same schemas:
    fusionseg::inception_dwconv3d_forward / _backward                (C++: the cpu and cuda backends)
    fusionseg::triton_inception_dwconv3d_forward / _backward         (Triton)
    forward(x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias, d_weight, d_bias) -> y
    backward(grad_y, x, cube_weight, w_weight, h_weight, d_weight)
        -> (grad_x, 4 weight grads (weights' dtype), 4 bias grads (weights' dtype))

`register_op_pair` gives a pair everything else it needs, so the two cannot drift apart:
- fake kernels (torch.compile, FakeTensor, the meta device); the forward's validates like the op;
- autograd: the backward op for first-order gradients; with ``create_graph=True`` the same
  gradients from differentiable PyTorch formulas, so second-order gradients are exact (the fused
  backward op itself has no derivative);
- FLOP formulas counted as the four depthwise convolutions it replaces, forward and backward;
- the autocast rule (CPU and CUDA): see `autocast_input`.
"""
from __future__ import annotations

import math

import torch

from ..._imports import when_imported
from .reference import inception_dwconv3d_reference
from .validation import check_args

# Kept alive for the process: dropping a Library object removes its kernels.
_AUTOCAST_LIBRARY = torch.library.Library("fusionseg", "FRAGMENT")
_AUTOCAST_KEYS = {"cpu": torch._C.DispatchKey.AutocastCPU, "cuda": torch._C.DispatchKey.AutocastCUDA}


def autocast_input(x: torch.Tensor, device_type: str) -> torch.Tensor:
    """The autocast rule of inception_dwconv3d, the same on every backend (the reference too):
    under autocast for x's device type, a float32/float16/bfloat16 x is cast to the autocast
    dtype and the op runs, and returns, in that dtype (as a convolution does under autocast);
    float64 inputs are left alone (PyTorch's eligibility rule). Gradients come back in each
    input's own dtype."""
    if x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return x.to(torch.get_autocast_dtype(device_type))
    return x


def conv_flops(x_shape, weight_shapes) -> int:
    """FLOPs of the four depthwise F.conv3d the op replaces (torch's conv formula:
    2 * N * output voxels * c_out * c_in/groups * kernel volume)."""
    voxels = math.prod(x_shape[2:])
    return sum(2 * x_shape[0] * voxels * math.prod(w) for w in weight_shapes)


def fake_backward_outputs(x, cube_weight, w_weight, h_weight, d_weight):
    """Empty tensors shaped like a backward op's outputs: grad x, four weight grads, four bias grads."""
    weights = (cube_weight, w_weight, h_weight, d_weight)
    grad_w = tuple(torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights)
    grad_b = tuple(w.new_empty((w.shape[0],)) for w in weights)
    return (torch.empty_like(x), *grad_w, *grad_b)


def differentiable_backward(grad_y, x, weights):
    """(grad_x, 4 weight grads, 4 bias grads) from PyTorch's own convolution formulas, with a
    graph (used for create_graph=True). Bias grads are the sums of grad_y over each group."""
    with torch.enable_grad():
        xs = x if x.requires_grad else x.detach().requires_grad_()
        ws = [w if w.requires_grad else w.detach().requires_grad_() for w in weights]
        y = inception_dwconv3d_reference(xs, ws[0], None, ws[1], None, ws[2], None, ws[3], None)
        grads = torch.autograd.grad(y, [xs, *ws], grad_y, create_graph=True, allow_unused=True,
                                    materialize_grads=True)
    gc = weights[0].shape[0]
    identity = x.shape[1] - 4 * gc
    grad_b = [grad_y[:, identity + g * gc: identity + (g + 1) * gc].sum(dim=(0, 2, 3, 4)).to(w.dtype)
              for g, w in enumerate(weights)]
    return (grads[0], *grads[1:], *grad_b)


def register_op_pair(forward_name: str, backward_name: str) -> None:
    """Fake kernels, autograd (with the double-backward rule), FLOP formulas and the autocast
    rule for the op pair fusionseg::<forward_name> / fusionseg::<backward_name>."""
    forward = getattr(torch.ops.fusionseg, forward_name)
    backward = getattr(torch.ops.fusionseg, backward_name)

    def forward_fake(x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias, d_weight, d_bias):
        check_args(x, (cube_weight, w_weight, h_weight, d_weight), (cube_bias, w_bias, h_bias, d_bias))
        return torch.empty_like(x)

    def backward_fake(grad_y, x, cube_weight, w_weight, h_weight, d_weight):
        return fake_backward_outputs(x, cube_weight, w_weight, h_weight, d_weight)

    torch.library.register_fake(f"fusionseg::{forward_name}", forward_fake)
    torch.library.register_fake(f"fusionseg::{backward_name}", backward_fake)

    def setup_context(ctx, inputs, output):
        x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias, d_weight, d_bias = inputs
        ctx.save_for_backward(x, cube_weight, w_weight, h_weight, d_weight)
        ctx.bias_dtypes = tuple(None if b is None else b.dtype
                                for b in (cube_bias, w_bias, h_bias, d_bias))

    def backward_rule(ctx, grad_y):
        x, *weights = ctx.saved_tensors
        grad_y = grad_y.to(x.dtype)
        if torch.is_grad_enabled():  # create_graph=True: gradients that are themselves differentiable
            grads = differentiable_backward(grad_y, x, weights)
        else:
            grads = backward(grad_y, x, *weights)
        out = [grads[0]]
        for gw, gb, bias_dtype in zip(grads[1:5], grads[5:9], ctx.bias_dtypes):
            out += [gw, None if bias_dtype is None else gb.to(bias_dtype)]
        return tuple(out)

    torch.library.register_autograd(f"fusionseg::{forward_name}", backward_rule,
                                    setup_context=setup_context)

    def forward_flops(x_shape, cube_w, cube_b, w_w, w_b, h_w, h_b, d_w, d_b, *args, **kwargs):
        return conv_flops(x_shape, (cube_w, w_w, h_w, d_w))

    def backward_flops(grad_shape, x_shape, cube_w, w_w, h_w, d_w, *args, **kwargs):
        # grad input + grad weight, as torch counts convolution_backward with both outputs.
        return 2 * conv_flops(x_shape, (cube_w, w_w, h_w, d_w))

    def register_flops():
        from torch.utils.flop_counter import register_flop_formula

        register_flop_formula(forward)(forward_flops)
        register_flop_formula(backward)(backward_flops)

    # the FLOP counter imports triton (0.13 s): registered when FlopCounterMode's module is imported
    when_imported("torch.utils.flop_counter", register_flops)

    for device_type, key in _AUTOCAST_KEYS.items():
        _AUTOCAST_LIBRARY.impl(forward_name, _autocast_kernel(forward, device_type, key), key.name,
                               with_keyset=True)


def _autocast_kernel(forward, device_type: str, key):
    excluded = torch._C.DispatchKeySet(key)

    def kernel(keyset, x, *args):
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return forward(autocast_input(x, device_type), *args)

    return kernel
