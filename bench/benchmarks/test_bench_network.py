"""The released network's inference forward (batch 1) and training step (batch 2: forward, loss,
backward, clipping, AdamW), per backend. CPU: 48x64x64 patches; GPU: the 96x128x128 patch."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from benchsupport import BACKENDS, DEVICE, DTYPES, ROUNDS, SCALE, require_backend, sync

PATCH = [max(16, s // SCALE) for s in ((48, 64, 64) if DEVICE == "cpu" else (96, 128, 128))]


@pytest.fixture(scope="module")
def network():
    from fusionseg_kernels.models import DualBranchUNet

    torch.manual_seed(0)
    return DualBranchUNet().to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("step", ("inference", "training"))
@pytest.mark.parametrize("backend", BACKENDS)
def test_network_step(benchmark, network, backend, step, dtype):
    require_backend(backend)
    network.set_backend(backend)
    gen = torch.Generator().manual_seed(1)
    batch = 1 if step == "inference" else 2
    x = torch.randn(batch, 1, *PATCH, generator=gen).to(DEVICE)
    amp = (torch.autocast(device_type=DEVICE, dtype=torch.bfloat16) if dtype == "bf16"
           else contextlib.nullcontext())
    if step == "inference":
        network.eval()

        def run():
            with torch.no_grad(), amp:
                network(x)
            sync()
    else:
        network.train()
        target = torch.randint(0, 2, (batch, *PATCH), generator=gen).to(DEVICE)
        opt = torch.optim.AdamW(network.parameters(), lr=8e-4, weight_decay=0.01, eps=1e-5)

        def run():
            opt.zero_grad(set_to_none=True)
            with amp:
                logits = network(x)
            F.cross_entropy(logits.float(), target).backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
            opt.step()
            sync()

    benchmark.extra_info.update(device=DEVICE, backend=backend, step=step, dtype=dtype, shape=[batch, 1, *PATCH])
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1, iterations=1)
