"""The op's edge cases (tests/ops/edge_cases.py) on every fused backend this machine runs (the
reference is the oracle they are compared with: plain PyTorch, which e.g. gives no weight gradient
at all for an empty batch)."""
from __future__ import annotations

import pytest
import torch

import fusionseg_kernels as fk
from fusionseg_kernels._extension import has_cuda_kernels
from tests.helpers import requires_gpu
from tests.ops.edge_cases import EDGE_CASES


def _backends():
    no_cuda_kernels = pytest.mark.skipif(torch.cuda.is_available() and not has_cuda_kernels(),
                                         reason="the CUDA kernels are not built")
    return [pytest.param("cpu", "cpu", id="cpu"),
            pytest.param("cuda", "cuda", id="cuda", marks=[requires_gpu, no_cuda_kernels]),
            pytest.param("triton", "cuda", id="triton", marks=[requires_gpu])]


@pytest.mark.parametrize("backend,device", _backends())
@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_case(case, backend, device):
    if device == "cuda":
        torch.backends.cudnn.allow_tf32 = False
    EDGE_CASES[case](lambda x, *a: fk.inception_dwconv3d(x, *a, backend=backend), device)
