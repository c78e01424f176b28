"""Distributed data parallel on the CPU: two gloo processes, each with half of a batch, take the
same training step as one process on the whole batch — the network with the fused "cpu" backend,
nnU-Net's Dice + CE loss (batch Dice gathered across processes, as nnU-Net does under DDP),
gradient clipping at 12 and AdamW as nnUNetTrainernew configures them."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("nnunetv2")

TINY = (16, 32, 32, 64, 64)
PER_RANK = 2
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model():
    from fusionseg_kernels.models import DualBranchUNet

    torch.manual_seed(0)
    model = DualBranchUNet(features_per_stage=TINY, backend="cpu")
    for head in model.decoder.unused_heads():  # as nnUNetTrainernew.configure_optimizers does
        head.requires_grad_(False)
    return model


def _loss(ddp: bool):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    return DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": ddp}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)


def _batch():
    gen = torch.Generator().manual_seed(1)
    target = (torch.rand(PER_RANK * WORLD, 1, 16, 32, 32, generator=gen) > 0.7).float()
    data = torch.randn(PER_RANK * WORLD, 1, 16, 32, 32, generator=gen) + target
    return data, target


def _step(model, network, loss_fn, data, target):
    """One step: loss, backward, the gradients before clipping, clipping at 12, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=8e-4, weight_decay=0.01, eps=1e-5)
    loss = loss_fn(network(data), target)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
    optimizer.step()
    return loss.detach(), grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def _worker(rank: int, port: int, out_path: str):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = _model()
        network = torch.nn.parallel.DistributedDataParallel(model)
        data, target = _batch()
        part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        loss, grads, params = _step(model, network, _loss(ddp=True), data[part], target[part])
        torch.save({"loss": loss, "grads": grads, "params": params}, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_step_equals_single_process_step_on_the_whole_batch(tmp_path):
    out = tmp_path / "step.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]
    ddp = ranks[0]

    model = _model()
    data, target = _batch()
    loss, grads, params = _step(model, model, _loss(ddp=False), data, target)

    # each rank's loss: its own cross-entropy plus the batch Dice of both halves; their mean is the
    # loss of the whole batch
    assert torch.allclose(sum(r["loss"] for r in ranks) / WORLD, loss, rtol=1e-5, atol=1e-6)
    for r in ranks[1:]:  # DDP keeps the replicas identical
        assert all(torch.equal(r["params"][n], ddp["params"][n]) for n in params)
    assert set(ddp["grads"]) == set(grads) and len(grads) == sum(p.requires_grad for p in model.parameters())
    scale = torch.cat([g.flatten() for g in grads.values()]).norm()
    for name, g in grads.items():
        assert (ddp["grads"][name] - g).norm() <= 1e-5 * scale, name
    for name, p in params.items():
        assert torch.allclose(ddp["params"][name], p, rtol=1e-4, atol=1e-6), name
