"""The Triton kernels of instance_norm_leaky_relu through Triton's interpreter (CPU tensors): forward,
every gradient and the in-place form against the float64 reference, in every dtype and layout
(opcheck and the fake kernels: tests/ops/test_triton_norm_op.py). Run with TRITON_INTERPRET=1
(see conftest.py)."""
from __future__ import annotations

import pytest
import torch

from fusionseg_kernels.ops.instance_norm_act import instance_norm_leaky_relu, instance_norm_leaky_relu_
from tests.ops.test_instance_norm_act import _inputs, check_backend_against_reference

# the network's kinds of calls, small; a plane of five chunks (4096 elements each) with a ragged
# end; a batch of two; no activation; no affine parameters
CASES = [
    ((1, 3, 6, 10, 12), True, 0.01),
    ((2, 2, 7, 9, 11), True, 0.01),
    ((1, 2, 9, 40, 50), False, 0.01),
    ((1, 3, 5, 8, 8), True, 1.0),
    ((2, 3, 4, 5, 6), False, 0.2),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-affine{int(c[1])}-slope{c[2]}")
def test_triton_forward_and_gradients_match_the_float64_reference(case, dtype, layout):
    check_backend_against_reference("triton", case, dtype, layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_in_place_forward_writes_the_out_of_place_result(layout):
    x, weight, bias, _ = _inputs((2, 3, 9, 40, 50), True, torch.float32, layout)
    x, weight, bias = x.float(), weight.float(), bias.float()
    expected = instance_norm_leaky_relu(x, weight, bias, negative_slope=0.05, backend="triton")
    y = x.clone()
    pointer = y.data_ptr()
    assert instance_norm_leaky_relu_(y, weight, bias, negative_slope=0.05, backend="triton") is y
    assert y.data_ptr() == pointer
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
