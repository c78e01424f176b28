"""Python-side registrations of the C++ op pair fusionseg::inception_dwconv3d_{forward,backward}.

The schemas and the CPU/CUDA kernels are defined in C++ (csrc/ops); here: fake kernels (for
torch.compile, FakeTensor and the meta device), autograd and the FLOP formulas.
"""
from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import register_flop_formula

from ..._extension import extension_available
from .validation import check_args

REGISTERED = False


def _conv_flops(x_shape, weight_shapes):
    # Counted as the four depthwise F.conv3d the op replaces (torch's conv formula:
    # 2 * N * out_voxels * c_out * c_in/groups * kernel volume).
    voxels = math.prod(x_shape[2:])
    return sum(2 * x_shape[0] * voxels * math.prod(w) for w in weight_shapes)


def fake_backward_outputs(x, cube_weight, w_weight, h_weight, d_weight):
    """Empty tensors shaped like a backward op's outputs: grad x, four weight grads, four bias grads."""
    weights = (cube_weight, w_weight, h_weight, d_weight)
    grad_w = tuple(torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights)
    grad_b = tuple(w.new_empty((w.shape[0],)) for w in weights)
    return (torch.empty_like(x), *grad_w, *grad_b)


def _register() -> None:
    global REGISTERED
    if REGISTERED or not extension_available():
        return
    forward = torch.ops.fusionseg.inception_dwconv3d_forward
    backward = torch.ops.fusionseg.inception_dwconv3d_backward

    @torch.library.register_fake("fusionseg::inception_dwconv3d_forward")
    def _forward_fake(x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias,
                      d_weight, d_bias):
        check_args(x, (cube_weight, w_weight, h_weight, d_weight), (cube_bias, w_bias, h_bias, d_bias))
        return torch.empty_like(x)

    @torch.library.register_fake("fusionseg::inception_dwconv3d_backward")
    def _backward_fake(grad_y, x, cube_weight, w_weight, h_weight, d_weight):
        return fake_backward_outputs(x, cube_weight, w_weight, h_weight, d_weight)

    def _setup_context(ctx, inputs, output):
        x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias, d_weight, d_bias = inputs
        ctx.save_for_backward(x, cube_weight, w_weight, h_weight, d_weight)
        ctx.has_bias = tuple(b is not None for b in (cube_bias, w_bias, h_bias, d_bias))

    def _backward(ctx, grad_y):
        x, cube_weight, w_weight, h_weight, d_weight = ctx.saved_tensors
        grads = backward(grad_y.contiguous(), x, cube_weight, w_weight, h_weight, d_weight)
        grad_x, grad_weights, grad_biases = grads[0], grads[1:5], grads[5:9]
        out = [grad_x]
        for gw, gb, has_bias in zip(grad_weights, grad_biases, ctx.has_bias):
            out += [gw, gb if has_bias else None]
        return tuple(out)

    torch.library.register_autograd("fusionseg::inception_dwconv3d_forward", _backward,
                                    setup_context=_setup_context)

    @register_flop_formula(forward)
    def _forward_flops(x_shape, cube_w, cube_b, w_w, w_b, h_w, h_b, d_w, d_b, *args, **kwargs):
        return _conv_flops(x_shape, (cube_w, w_w, h_w, d_w))

    @register_flop_formula(backward)
    def _backward_flops(grad_shape, x_shape, cube_w, w_w, h_w, d_w, *args, **kwargs):
        # grad input + grad weight, like convolution_backward with both outputs.
        return 2 * _conv_flops(x_shape, (cube_w, w_w, h_w, d_w))

    REGISTERED = True


_register()
