"""The op on the network's two largest distinct calls, forward and forward+backward, per backend."""
from __future__ import annotations

import math

import pytest
import torch

from benchsupport import BACKENDS, DEVICE, DTYPES, ROUNDS, SCALE, TORCH_DTYPES, require_backend, sync

from bench import harness as common

import fusionseg_kernels as fk
from fusionseg_kernels.testing import make_op_args

BATCH = 1 if DEVICE == "cpu" else 2
CALLS = sorted(common.network_layer_calls(batch=BATCH, scale=SCALE),
               key=lambda c: -math.prod(c[0]))[:2]


def _id(call):
    return "x".join(map(str, call[0]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ("fwd", "fwdbwd"))
@pytest.mark.parametrize("call", CALLS, ids=_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_op(benchmark, backend, call, mode, dtype):
    require_backend(backend)
    shape, gc, count = call
    dt = TORCH_DTYPES[dtype]
    grad = mode == "fwdbwd"
    x = torch.randn(shape, device=DEVICE, dtype=dt).requires_grad_(grad)
    args = make_op_args(shape[1], gc, dtype=dt, device=DEVICE, requires_grad=grad)
    gy = torch.randn(shape, device=DEVICE, dtype=dt)
    inputs = [x] + args

    def run():
        y = fk.inception_dwconv3d(x, *args, backend=backend)
        if grad:
            torch.autograd.grad(y, inputs, gy)
        sync()

    benchmark.extra_info.update(device=DEVICE, backend=backend, shape=list(shape), gc=gc, calls=count,
                                dtype=dtype, mode=mode, x_bytes=x.numel() * x.element_size())
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1, iterations=1)
