"""The CUDA kernels of instance_norm_leaky_relu (csrc/ops/cuda/instance_norm_act_kernel.cu, the C++
trio's CUDA implementation) on a CUDA GPU: opcheck, and every output and gradient against the
float64 reference in each dtype and layout, out of place and in place (also run by
bench/gpu_check.sh). Without a GPU their logic is checked under the CPU emulation
(tests/ops/test_cuda_emulation.py) and their registers and memory access statically
(tests/ops/test_gpu_static.py)."""
from __future__ import annotations

import pytest
import torch

from fusionseg_kernels._extension import has_cuda_kernels
from fusionseg_kernels.ops.instance_norm_act import instance_norm_leaky_relu, instance_norm_leaky_relu_
from tests.ops.test_instance_norm_act import CASES, TOLERANCE, _inputs, check_against_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine"),
    pytest.mark.skipif(not has_cuda_kernels(), reason="the extension was built without its CUDA kernels"),
]


def _cuda_norm(a, w, b, s):
    """The cuda backend on copies of CPU tensors (.cuda() and .cpu() are differentiable, so the
    gradients land on the CPU leaves the reference check reads)."""
    on_gpu = [t.cuda() if t is not None else None for t in (a, w, b)]
    return instance_norm_leaky_relu(*on_gpu, negative_slope=s, backend="cuda").cpu()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-affine{int(c[1])}-slope{c[2]}")
def test_cuda_matches_the_float64_reference(case, dtype, layout):
    check_against_reference(_cuda_norm, case, dtype, layout)


def test_cuda_opcheck_and_in_place():
    for layout in ("contiguous", "channels_last"):
        x, weight, bias, _ = _inputs((2, 3, 9, 40, 50), True, torch.float32, layout)
        args = [t.float().cuda().requires_grad_() for t in (x, weight, bias)]
        torch.library.opcheck(torch.ops.fusionseg.instance_norm_leaky_relu_forward, (*args, 1e-5, 0.01))
        for dtype in (torch.float32, torch.bfloat16):
            xc = x.to(dtype).cuda()
            expected = instance_norm_leaky_relu(xc, weight.to(dtype).cuda(), bias.to(dtype).cuda(), backend="cuda")
            y = xc.clone()
            with torch.no_grad():
                instance_norm_leaky_relu_(y, weight.to(dtype).cuda(), bias.to(dtype).cuda(), backend="cuda")
            rtol, atol = TOLERANCE[dtype]
            torch.testing.assert_close(y, expected, rtol=rtol, atol=atol)
