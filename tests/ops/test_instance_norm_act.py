"""The fused InstanceNorm + LeakyReLU op against its float64 reference: forward and every gradient,
in every dtype and layout it takes, with and without the affine parameters and the activation;
opcheck (schema, fake kernel, autograd registration); exact second order; the same refusals as
the reference path; results independent of the thread count."""
from __future__ import annotations

import os

import pytest
import torch

from fusionseg_kernels._extension import extension_available
from fusionseg_kernels.ops.instance_norm_act import (instance_norm_leaky_relu, instance_norm_leaky_relu_,
                                                     instance_norm_leaky_relu_reference)

pytestmark = pytest.mark.skipif(not extension_available(), reason="the C++ extension is not built")

# (shape, affine, negative_slope): the network's kinds of calls, small; a plane of more than one
# task (65536 elements); a single channel; a batch of two
CASES = [
    ((1, 8, 6, 10, 12), True, 0.01),
    ((2, 5, 7, 9, 11), True, 0.01),
    ((1, 6, 5, 8, 8), True, 1.0),          # no activation (the residual branch's second norm)
    ((1, 4, 6, 7, 9), False, 0.2),
    ((1, 2, 48, 48, 40), True, 0.01),      # 92,160 elements per plane: two tasks
    ((1, 1, 3, 4, 5), True, 0.01),
    ((3, 3, 2, 3, 4), False, 0.01),
]
TOLERANCE = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5), torch.float16: (2e-2, 2e-2),
             torch.bfloat16: (8e-2, 8e-2)}


def _inputs(shape, affine, dtype, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1.5)
    weight = (torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5) if affine else None
    bias = torch.randn(shape[1], generator=g, dtype=torch.float64) * 0.3 if affine else None
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    elif layout == "strided":   # a slice: neither layout, copied by the op
        x = torch.cat([x, x], dim=4)[..., ::2]
    return x, weight, bias, grad


def _run(fn, x, weight, bias, grad, slope, dtype):
    xs = x.to(dtype).detach().requires_grad_()
    ps = [p.to(dtype).detach().requires_grad_() if p is not None else None for p in (weight, bias)]
    y = fn(xs, ps[0], ps[1], slope)
    y.backward(grad.to(dtype))
    return y, xs.grad, *(p.grad if p is not None else None for p in ps)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-affine{int(c[1])}-slope{c[2]}")
def test_forward_and_gradients_match_the_float64_reference(case, dtype, layout):
    check_backend_against_reference("cpu", case, dtype, layout)


def check_backend_against_reference(backend, case, dtype, layout):
    """y and every gradient of `backend` against the float64 reference (`check_against_reference`)."""
    check_against_reference(lambda a, w, b, s: instance_norm_leaky_relu(a, w, b, negative_slope=s, backend=backend),
                            case, dtype, layout)


def check_against_reference(fn, case, dtype, layout):
    """y and every gradient of fn(x, weight, bias, negative_slope) against the float64 reference on
    the same inputs (rounded to dtype first, then float64: LeakyReLU's gradient jumps at 0, so an
    unrounded x could put a voxel on the other side); y laid out like its input. Also used by the
    CUDA emulation runner (tests/cuda_emulation/run_cases.py)."""
    shape, affine, slope = case
    x, weight, bias, grad = _inputs(shape, affine, dtype, layout)
    fused = _run(fn, x, weight, bias, grad, slope, dtype)
    rounded = [t.to(dtype).double() if t is not None else None for t in (x, weight, bias, grad)]
    expected = _run(lambda a, w, b, s: instance_norm_leaky_relu_reference(a, w, b, 1e-5, s),
                    *rounded, slope, torch.float64)
    rtol, atol = TOLERANCE[dtype]
    for name, got, want in zip(["y", "grad x", "grad weight", "grad bias"], fused, expected):
        if want is None:
            assert got is None
            continue
        assert got.dtype == dtype, name
        scale = max(1.0, float(want.detach().abs().max()))   # weight/bias grads are sums over many voxels
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol * scale, msg=name)
    assert fused[0].stride() == torch.empty_like(x.to(dtype)).stride()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[1])
def test_in_place_forward_writes_the_out_of_place_result_into_its_input(dtype, layout):
    x, weight, bias, _ = _inputs((2, 5, 7, 9, 11), True, dtype, layout)
    x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
    expected = instance_norm_leaky_relu(x, weight, bias, negative_slope=0.05, backend="cpu")
    for backend in ("cpu", "reference"):
        y = x.clone()
        pointer, strides = y.data_ptr(), y.stride()
        out = instance_norm_leaky_relu_(y, weight, bias, negative_slope=0.05, backend=backend)
        assert out is y and y.data_ptr() == pointer and y.stride() == strides
        if backend == "cpu":
            assert torch.equal(y, expected)
        else:
            rtol, atol = TOLERANCE[dtype]
            torch.testing.assert_close(y, expected, rtol=rtol, atol=atol)


def test_in_place_forward_is_refused_where_autograd_records():
    x = torch.randn(1, 2, 3, 4, 5, requires_grad=True)
    with pytest.raises(ValueError, match="without gradients"):
        instance_norm_leaky_relu_(x.clone())
    with torch.no_grad():
        instance_norm_leaky_relu_(x.clone())
    torch.library.opcheck(torch.ops.fusionseg.instance_norm_leaky_relu_, (x.detach().clone(), None, None, 1e-5, 0.01),
                          test_utils=("test_schema", "test_faketensor"))


def test_opcheck():
    for layout in ("contiguous", "channels_last"):
        x, weight, bias, _ = _inputs((2, 3, 4, 5, 6), True, torch.float32, layout)
        x = x.float().requires_grad_()
        params = (weight.float().requires_grad_(), bias.float().requires_grad_())
        torch.library.opcheck(torch.ops.fusionseg.instance_norm_leaky_relu_forward, (x, *params, 1e-5, 0.01))
        torch.library.opcheck(torch.ops.fusionseg.instance_norm_leaky_relu_forward,
                              (x.detach(), None, None, 1e-5, 0.2))


def test_gradcheck_and_second_order():
    x, weight, bias, _ = _inputs((1, 3, 3, 4, 5), True, torch.float64, "contiguous")
    args = (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_())

    def fn(a, w, b):
        return instance_norm_leaky_relu(a, w, b, negative_slope=0.1, backend="cpu")

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_the_same_refusals_as_the_reference_path():
    x = torch.randn(1, 3, 4, 4, 4)
    bad = [
        ((torch.randn(3, 4, 4, 4),), ValueError, "5-D input"),
        ((torch.randn(1, 3, 4, 4, 4).int(),), TypeError, "float32, float64, float16 or bfloat16 input"),
        ((torch.randn(1, 3, 1, 1, 1),), ValueError, "more than 1 spatial element"),
        ((x, torch.ones(4)), ValueError, "weight must have shape [3]"),
        ((x, None, torch.ones(3, dtype=torch.int64)), TypeError, "bias must be float32"),
    ]
    for args, kind, words in bad:
        for backend in ("reference", "cpu"):
            with pytest.raises(kind, match=words.replace("[", r"\[").replace("]", r"\]")):
                instance_norm_leaky_relu(*args, backend=backend)
    with pytest.raises(ValueError, match="eps must be positive"):
        instance_norm_leaky_relu(x, eps=0.0)


@pytest.mark.parametrize("shape", [(1, 4, 40, 40, 50), (1, 1, 40, 40, 50)], ids=["4 planes", "1 plane"])
def test_results_do_not_depend_on_the_thread_count(shape):
    """Bit for bit with 1 and 2 threads; with one plane (two chunks of 65,536) and 2 threads the
    kernels cut the plane into tasks instead of giving each thread whole planes: the same sums."""
    x, weight, bias, grad = _inputs(shape, True, torch.float32, "contiguous")
    outs = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(_run(lambda a, w, b, s: instance_norm_leaky_relu(a, w, b, negative_slope=s, backend="cpu"),
                             x, weight, bias, grad, 0.01, torch.float32))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_backend_choice():
    from fusionseg_kernels.ops.instance_norm_act.functional import op_prefix
    from fusionseg_kernels.ops.inception_dwconv3d.dispatch import BackendUnavailableError

    x = torch.randn(1, 2, 3, 4, 5)
    assert op_prefix("auto", x) == "" and op_prefix("cpu", x) == "" and op_prefix("reference", x) is None
    with pytest.raises(ValueError, match="backend must be one of auto, reference, cpu, cuda, triton"):
        op_prefix("fast", x)
    with pytest.raises(BackendUnavailableError, match="the cuda backend takes CUDA tensors"):
        instance_norm_leaky_relu(x, backend="cuda")
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(BackendUnavailableError, match="the triton backend takes CUDA tensors"):
            instance_norm_leaky_relu(x, backend="triton")
    meta = torch.empty(1, 2, 3, 4, 5, device="meta")
    assert op_prefix("auto", meta) is None
    with pytest.raises(BackendUnavailableError, match="the cpu backend takes CPU tensors"):
        op_prefix("cpu", meta)


def test_torch_compile_fullgraph_traces_the_fused_norm_in_both_forms():
    """A conv-norm-act layer under torch.compile(fullgraph=True): the backend choice is a constant
    of the graph, the in-place form (no_grad) and the autograd form both trace, results as eager."""
    from fusionseg_kernels.models.blocks import ConvNormAct

    torch.manual_seed(0)
    layer = ConvNormAct(torch.nn.Conv3d(2, 3, 3, padding=1), 3, 1e-5, True, 0.01, norm_backend="auto")
    x = torch.randn(1, 2, 6, 8, 8)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-6, atol=1e-6)
    xg = x.clone().requires_grad_()
    compiled(xg).square().sum().backward()
    xe = x.clone().requires_grad_()
    layer.zero_grad()
    layer(xe).square().sum().backward()
    torch.testing.assert_close(xg.grad, xe.grad, rtol=1e-5, atol=1e-6)
