"""Python-side registration of the op trios fusionseg::instance_norm_leaky_relu_{forward,backward,_}
(C++: the cpu backend's kernels for CPU tensors, the cuda backend's for CUDA tensors) and
fusionseg::triton_instance_norm_leaky_relu_{forward,backward,_} (Triton,
triton_impl.py), which share their schemas: fake kernels (torch.compile, FakeTensor, the meta
device) and autograd.

- forward(x, weight, bias, eps, negative_slope) -> (y, mean, rstd): y laid out like x (its dtype
  and strides, as the C++ kernels return it), mean and rstd (N, C) in float32 (float64 for a
  float64 x).
- instance_norm_leaky_relu_(x, weight, bias, eps, negative_slope) -> (): the forward written
  into x, for inference (no autograd formula: the Python wrapper refuses it where one is needed).
- backward(grad_y, x, mean, rstd, weight, bias, negative_slope) -> (grad_x, grad_weight,
  grad_bias); the parameter gradients are empty tensors when weight is None.
- autograd: the backward op for first-order gradients; with ``create_graph=True`` the gradients
  of the reference's PyTorch formulas, so second-order gradients are exact.
- No autocast rule and no FLOP formula, as for the two PyTorch ops it replaces: InstanceNorm is
  in none of autocast's cast lists (it runs, and returns, in its input's dtype) and torch's FLOP
  counter counts neither op, so a network's counts do not depend on the backend.
"""
from __future__ import annotations

import torch

from .reference import instance_norm_leaky_relu_reference

#: the op trios registered so far, by name prefix ("" for the C++ ops, "triton_" for Triton's)
REGISTERED: set[str] = set()


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def register(prefix: str = "") -> None:
    """Fake kernels and autograd for fusionseg::<prefix>instance_norm_leaky_relu_{forward,backward,_}
    (the same for both trios, so they cannot drift apart)."""
    if prefix in REGISTERED:
        return
    if prefix == "triton_":
        from . import triton_impl  # noqa: F401  (defines the Triton trio)
    name = f"fusionseg::{prefix}instance_norm_leaky_relu"
    backward = getattr(torch.ops.fusionseg, f"{prefix}instance_norm_leaky_relu_backward")

    @torch.library.register_fake(f"{name}_forward")
    def _forward_fake(x, weight, bias, eps, negative_slope):
        from .validation import check_args

        check_args(x, weight, bias, eps, negative_slope)
        stats = x.new_empty((x.shape[0], x.shape[1]), dtype=_stats_dtype(x))
        return torch.empty_like(x), stats, stats.clone()

    @torch.library.register_fake(f"{name}_")
    def _inplace_fake(x, weight, bias, eps, negative_slope):
        from .validation import check_args

        check_args(x, weight, bias, eps, negative_slope)

    @torch.library.register_fake(f"{name}_backward")
    def _backward_fake(grad_y, x, mean, rstd, weight, bias, negative_slope):
        if weight is None:
            return torch.empty_like(x), x.new_empty((0,)), x.new_empty((0,))
        return (torch.empty_like(x), torch.empty_like(weight),
                torch.empty_like(bias if bias is not None else weight))

    def setup_context(ctx, inputs, output):
        x, weight, bias, eps, negative_slope = inputs
        _, mean, rstd = output
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.eps, ctx.negative_slope = eps, negative_slope
        ctx.mark_non_differentiable(mean, rstd)

    def backward_rule(ctx, grad_y, _grad_mean, _grad_rstd):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        grad_y = grad_y.to(x.dtype)
        if torch.is_grad_enabled():   # create_graph=True: gradients differentiable in x, weight, bias, grad_y
            inputs = (x, weight, bias)
            wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
            grads = [None, None, None]
            if wanted:
                with torch.enable_grad():
                    y = instance_norm_leaky_relu_reference(x, weight, bias, ctx.eps, ctx.negative_slope)
                    found = torch.autograd.grad(y, [inputs[i] for i in wanted], grad_y, create_graph=True)
                for i, g in zip(wanted, found):
                    grads[i] = g
            return *grads, None, None
        gx, gw, gb = backward(grad_y, x, mean, rstd, weight, bias, ctx.negative_slope)
        return gx, gw if weight is not None else None, gb if bias is not None else None, None, None

    torch.library.register_autograd(f"{name}_forward", backward_rule, setup_context=setup_context)
    REGISTERED.add(prefix)
