"""The op's edge cases, written once and run on every backend: by tests/ops/test_edge_cases.py
for the backends this machine runs (reference and cpu here; cuda and triton on a GPU) and by the
Triton interpreter suite for the Triton kernels on CPU tensors. Each case takes the op (a
function of x and the eight weight/bias arguments) and the device, and asserts. Sizes are small
enough for the interpreter."""
from __future__ import annotations

import torch

from fusionseg_kernels import inception_dwconv3d_reference
from tests.helpers import assert_matches_reference, make_input, make_op_args, outputs_and_grads


def some_biases_missing(op, device):
    x = make_input((1, 8, 3, 4, 5), dtype=torch.float64, device=device)
    args = make_op_args(8, 1, dtype=torch.float64, device=device)
    args[3] = None  # w_bias
    args[7] = None  # d_bias
    assert_matches_reference(op, x, args)


def empty_batch(op, device):
    x = make_input((0, 8, 3, 4, 5), dtype=torch.float32, device=device, requires_grad=True)
    args = make_op_args(8, 1, dtype=torch.float32, device=device, requires_grad=True)
    y = op(x, *args)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    for a in args:
        assert a.grad is not None and a.grad.shape == a.shape and torch.count_nonzero(a.grad) == 0


def gc_zero_is_the_identity(op, device):
    x = make_input((2, 5, 3, 4, 5), dtype=torch.float32, device=device, requires_grad=True)
    args = make_op_args(5, 0, dtype=torch.float32, device=device, requires_grad=True)
    y = op(x, *args)
    assert torch.equal(y, x)
    grad_y = make_input(x.shape, dtype=x.dtype, device=device, seed=7)
    grads = torch.autograd.grad(y, [x] + args, grad_y)
    assert torch.equal(grads[0], grad_y)
    assert all(g.numel() == 0 and g.shape == a.shape for g, a in zip(grads[1:], args))


def _layout(base, layout):
    if layout == "channels_last_3d":
        return base.contiguous(memory_format=torch.channels_last_3d)
    if layout == "sliced":
        return base[..., ::2]                                    # W stride 2
    return base.transpose(3, 4).contiguous().transpose(3, 4)     # H and W swapped in memory


def layouts_are_kept(op, device):
    """Inputs in three layouts: the result matches the reference and is laid out as
    ``empty_like(x)`` (channels_last_3d stays channels_last_3d; no hidden copy to contiguous)."""
    base = make_input((2, 10, 4, 5, 12), dtype=torch.float32, device=device)
    args = make_op_args(10, 2, dtype=torch.float32, device=device)
    for layout in ("channels_last_3d", "sliced", "permuted"):
        x = _layout(base, layout)
        y = op(x, *args)
        assert y.stride() == torch.empty_like(x).stride(), layout
        assert_matches_reference(op, x, args)


def weights_are_rounded_to_the_inputs_dtype(op, device):
    """The contract: weights are rounded to x's dtype first, so float64 weights give bit for bit
    what the same weights rounded by the caller give; gradients come back in each argument's own
    dtype."""
    x = make_input((1, 8, 3, 4, 5), dtype=torch.float32, device=device)
    args64 = make_op_args(8, 1, dtype=torch.float64, device=device)
    y = op(x, *args64)
    assert y.dtype == torch.float32
    assert torch.equal(y, op(x, *[a.float() for a in args64]))
    # an op computing with the unrounded weights would give other bits: the check can fail
    assert not torch.equal(y, inception_dwconv3d_reference(x.double(), *args64).float())
    x.requires_grad_(True)
    args = [a.clone().requires_grad_(True) for a in args64]
    op(x, *args).sum().backward()
    assert x.grad.dtype == torch.float32 and all(a.grad.dtype == torch.float64 for a in args)


def backward_is_deterministic(op, device):
    x = make_input((1, 12, 6, 7, 9), dtype=torch.float32, device=device)
    args = make_op_args(12, 2, dtype=torch.float32, device=device)
    grad_y = make_input(x.shape, dtype=x.dtype, device=device, seed=3)
    first = outputs_and_grads(op, x, args, grad_y)
    second = outputs_and_grads(op, x, args, grad_y)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        assert torch.equal(a, b)


EDGE_CASES = {f.__name__: f for f in (some_biases_missing, empty_batch, gc_zero_is_the_identity, layouts_are_kept,
                                      weights_are_rounded_to_the_inputs_dtype, backward_is_deterministic)}
