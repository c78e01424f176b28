"""The Triton trio of instance_norm_leaky_relu (fusionseg::triton_instance_norm_leaky_relu_*) outside
the interpreter: its fake kernels on any machine; opcheck and accuracy on a CUDA GPU (also run by
bench/gpu_check.sh). The kernels' logic on the CPU: tests/interpreter/test_triton_norm.py."""
from __future__ import annotations

import os

import pytest
import torch

from fusionseg_kernels.ops.instance_norm_act import instance_norm_leaky_relu, instance_norm_leaky_relu_reference
from tests.ops.test_instance_norm_act import _inputs, _run


def _triton_trio():
    pytest.importorskip("triton")
    from fusionseg_kernels.ops.instance_norm_act.registration import register

    register("triton_")
    return torch.ops.fusionseg


def test_triton_trio_fake_kernels_give_the_shapes_dtypes_and_layouts():
    """The Triton trio on FakeTensors (what torch.compile traces): the C++ trio's outputs."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("fake tensors and the interpreter do not mix; run without TRITON_INTERPRET=1")
    from torch._subclasses.fake_tensor import FakeTensorMode

    ops = _triton_trio()
    with FakeTensorMode():
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            x = torch.empty(2, 3, 4, 5, 6, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
            w = torch.empty(3, dtype=dtype)
            y, mean, rstd = ops.triton_instance_norm_leaky_relu_forward(x, w, w, 1e-5, 0.01)
            assert y.shape == x.shape and y.dtype == dtype and y.stride() == x.stride()
            assert mean.shape == (2, 3) and mean.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            gx, gw, gb = ops.triton_instance_norm_leaky_relu_backward(y, x, mean, rstd, w, w, 0.01)
            assert gx.shape == x.shape and gw.shape == (3,) and gb.dtype == dtype
            ops.triton_instance_norm_leaky_relu_(x, None, None, 1e-5, 0.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")
def test_triton_trio_opcheck_and_accuracy_on_the_gpu():
    _triton_trio()
    for layout in ("contiguous", "channels_last"):
        x, weight, bias, grad = _inputs((2, 3, 9, 40, 50), True, torch.float32, layout)
        args = [t.float().cuda().requires_grad_() for t in (x, weight, bias)]
        torch.library.opcheck(torch.ops.fusionseg.triton_instance_norm_leaky_relu_forward, (*args, 1e-5, 0.01))
        fused = _run(lambda a, w, b, s: instance_norm_leaky_relu(a, w, b, negative_slope=s, backend="triton"),
                     x.cuda(), weight.cuda(), bias.cuda(), grad.cuda(), 0.01, torch.float32)
        expected = _run(lambda a, w, b, s: instance_norm_leaky_relu_reference(a, w, b, 1e-5, s),
                        *[t.float().double() for t in (x, weight, bias, grad)], 0.01, torch.float64)
        for got, want in zip(fused, expected):
            scale = max(1.0, float(want.detach().abs().max()))
            torch.testing.assert_close(got.double().cpu(), want, rtol=2e-5, atol=2e-5 * scale)
