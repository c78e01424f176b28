"""Every backend against the float64 reference, forward and every gradient, on one case table
(`fusionseg_kernels.testing.CONFORMANCE_CASES`). The Triton backend runs the same table under its
interpreter in tests/interpreter (its own process); the CUDA emulation runner and the
sanitizer driver iterate over it too."""
from __future__ import annotations

import pytest
import torch

import fusionseg_kernels as fk
from fusionseg_kernels._extension import has_cuda_kernels
from fusionseg_kernels.testing import (CONFORMANCE_CASES, UNIT_ROUNDOFF, case_inputs, check_conformance,
                                       make_input, make_op_args)


def _backends():
    out = [pytest.param("cpu", "cpu", id="cpu")]
    gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")
    out.append(pytest.param("cuda", "cuda", id="cuda", marks=[gpu, pytest.mark.skipif(
        torch.cuda.is_available() and not has_cuda_kernels(), reason="the CUDA kernels are not built")]))
    out.append(pytest.param("triton", "cuda", id="triton", marks=[gpu]))
    return out


@pytest.mark.parametrize("backend,device", _backends())
@pytest.mark.parametrize("case", CONFORMANCE_CASES, ids=lambda c: c.id)
def test_backend_matches_float64_reference(case, backend, device):
    if torch.cuda.is_available() and device == "cuda":
        torch.backends.cudnn.allow_tf32 = False
    x, args, grad_y = case_inputs(case, device)
    y = fk.inception_dwconv3d(x, *args, backend=backend)
    assert y.shape == x.shape and y.dtype == x.dtype
    failures = check_conformance(lambda x, *a: fk.inception_dwconv3d(x, *a, backend=backend), x, args, grad_y)
    assert not failures, "; ".join(failures)


def test_low_precision_check_can_fail():
    """The fp16/bf16 bound rejects a result 3x as far from float64 as PyTorch's own."""
    x = make_input((1, 16, 6, 7, 9), dtype=torch.float16)
    args = make_op_args(16, 2, dtype=torch.float16)
    grad_y = make_input(x.shape, dtype=torch.float16, seed=7)

    def sloppy(x, *a):  # the reference's fp16 result, plus noise of about 3 unit roundoffs
        y = fk.inception_dwconv3d_reference(x, *a)
        noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(0)).to(y.dtype)
        return y + (3 * UNIT_ROUNDOFF[torch.float16]) * y.detach() * noise

    assert any(f.startswith("y:") for f in check_conformance(sloppy, x, args, grad_y))
    assert not check_conformance(fk.inception_dwconv3d_reference, x, args, grad_y)
