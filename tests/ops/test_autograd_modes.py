"""Second-order gradients, forward-mode AD and autocast: the same values and dtypes on every
backend as on the reference (they used to be silently zero, or in another dtype)."""
from __future__ import annotations

import pytest
import torch

import fusionseg_kernels as fk
from tests.helpers import make_input, make_op_args, rel_l2

BACKENDS = ["reference", "cpu"]


def _op(backend):
    return lambda x, *a: fk.inception_dwconv3d(x, *a, backend=backend)


def _second_order(backend):
    x = make_input((1, 16, 4, 5, 6), requires_grad=True)
    args = make_op_args(16, 2, requires_grad=True)
    y = _op(backend)(x, *args)
    gx, gw = torch.autograd.grad((y ** 2).sum(), [x, args[0]], create_graph=True)
    return torch.autograd.grad(gx.square().sum() + gw.sum(), [x, *args], allow_unused=True,
                               materialize_grads=True)


def test_double_backward_matches_reference():
    ref = _second_order("reference")
    got = _second_order("cpu")
    assert float(ref[0].abs().sum()) > 0
    for r, g in zip(ref, got):
        assert rel_l2(g, r) < 1e-12


def test_gradgradcheck_cpu_backend():
    # tiny: gradgradcheck's cost grows with the square of the number of input elements
    x = make_input((1, 5, 2, 3, 3), requires_grad=True)
    args = make_op_args(5, 1, kernels=((3, 3, 3), (1, 1, 3), (1, 3, 1), (3, 1, 1)), bias=False,
                        requires_grad=True)
    assert torch.autograd.gradgradcheck(_op("cpu"), (x, *args))


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_mode_jvp_matches_reference(backend):
    x = make_input((1, 16, 4, 5, 6))
    args = make_op_args(16, 2)
    tangents = [make_input(x.shape, seed=3)] + [torch.randn_like(a) for a in args]
    _, ref = torch.func.jvp(_op("reference"), (x, *args), tuple(tangents))
    _, got = torch.func.jvp(_op(backend), (x, *args), tuple(tangents))
    assert float(ref.abs().sum()) > 0 and rel_l2(got, ref) < 1e-12

    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        y = _op(backend)(fwAD.make_dual(x, tangents[0]), *args)
        tangent = fwAD.unpack_dual(y).tangent
    _, ref_x = torch.func.jvp(lambda x: _op("reference")(x, *args), (x,), (tangents[0],))
    assert tangent is not None and rel_l2(tangent, ref_x) < 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_same_dtype_and_values_on_every_backend(dtype):
    x = make_input((1, 16, 4, 5, 6), dtype=torch.float32, requires_grad=True)
    args = make_op_args(16, 2, dtype=torch.float32, requires_grad=True)
    results = {}
    for backend in BACKENDS:
        with torch.autocast("cpu", dtype=dtype):
            y = _op(backend)(x, *args)
        grads = torch.autograd.grad(y.float().square().sum(), [x, *args])
        results[backend] = (y, grads)
        assert y.dtype == dtype, backend  # the rule: the op runs and returns in the autocast dtype
        assert grads[0].dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads[1:])
    (y_ref, g_ref), (y_cpu, g_cpu) = results["reference"], results["cpu"]
    # identity channels are the input rounded to the autocast dtype on both
    assert torch.equal(y_ref[:, :8], x[:, :8].to(dtype)) and torch.equal(y_cpu[:, :8], y_ref[:, :8])
    assert rel_l2(y_cpu, y_ref) < 1e-2
    for a, b in zip(g_cpu, g_ref):
        assert rel_l2(a, b) < 2e-2


def test_autocast_leaves_float64_alone():
    x = make_input((1, 16, 4, 5, 6))
    args = make_op_args(16, 2)
    for backend in BACKENDS:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _op(backend)(x, *args).dtype == torch.float64, backend
