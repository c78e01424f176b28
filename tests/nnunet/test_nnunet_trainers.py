"""The nnU-Net trainers with nnU-Net v2 itself: found through nnUNet_extTrainer, networks built from
plans (new and old hook signatures), the release's recipe, deep supervision, bf16 autocast and
checkpoints in the released form."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from tests.nnunet.support import DATASET_JSON, PLANS, write_dataset_folder

from fusionseg_kernels.errors import FusionsegError
from fusionseg_kernels.models import DualBranchUNet, PlainConvUNet, ReleasedStateDictError
from fusionseg_kernels.nnunet import ext_trainer_dir, rewrite_plans
from fusionseg_kernels.nnunet import trainers as fst

nnunetv2 = pytest.importorskip("nnunetv2")
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss  # noqa: E402
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper  # noqa: E402
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler  # noqa: E402
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name  # noqa: E402
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402

TINY = [16, 32, 32, 64, 64]
TRAINERS = ["nnUNetTrainernew", "nnUNetTrainernew_bf16", "nnUNetTrainerFusionsegSingle",
            "nnUNetTrainerFusionsegSingle_bf16", "nnUNetTrainerFusionsegPlain", "nnUNetTrainerFusionsegPlain_bf16"]


@pytest.mark.parametrize("name", TRAINERS)
def test_trainers_found_through_nnunet_ext_trainer(name, monkeypatch):
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer"):
        recursive_find_trainer_class_by_name(name)
    monkeypatch.setenv("nnUNet_extTrainer", str(ext_trainer_dir()))
    cls = recursive_find_trainer_class_by_name(name)
    assert cls is getattr(fst, name)  # the package's own class, not a second copy
    assert issubclass(cls, nnUNetTrainer)


def test_ext_trainer_found_among_other_folders(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([str(tmp_path / "missing"), str(tmp_path),
                                                             str(ext_trainer_dir())]))
    assert recursive_find_trainer_class_by_name("nnUNetTrainernew") is fst.nnUNetTrainernew


# --- networks from plans ------------------------------------------------------------------------

def _managers(plans):
    pm = PlansManager(copy.deepcopy(plans))
    return pm, pm.get_configuration("3d_fullres")


def test_default_plans_build_the_released_network(monkeypatch):
    monkeypatch.setenv("FUSIONSEG_BACKEND", "reference")
    pm, cm = _managers(PLANS)
    net = fst.nnUNetTrainernew.build_network_architecture(pm, cm, 1, 2, False)
    assert type(net) is DualBranchUNet and net.config == DualBranchUNet().config
    assert net.backend == "reference" and not net.deep_supervision
    # the plain trainer builds nnU-Net's planned U-Net (4 stages here) from the same plans
    plain = fst.nnUNetTrainerFusionsegPlain.build_network_architecture(pm, cm, 1, 2, enable_deep_supervision=True)
    assert type(plain) is PlainConvUNet and plain.features_per_stage == (32, 64, 128, 256) and plain.deep_supervision


def test_fusionseg_plans_build_their_architecture_new_and_old_signature(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONSEG_BACKEND", "cpu")
    folder = write_dataset_folder(tmp_path / "D")
    plans = json.loads(rewrite_plans(folder, patch_size=(16, 32, 32), features=TINY).read_text())
    pm, cm = _managers(plans)
    new = fst.nnUNetTrainernew.build_network_architecture(pm, cm, 1, 2, True)
    old = fst.nnUNetTrainernew.build_network_architecture(
        cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import, 1, 2,
        enable_deep_supervision=False)
    for net in (new, old):
        assert type(net) is DualBranchUNet and list(net.features_per_stage) == TINY and net.backend == "cpu"
    assert new.deep_supervision and not old.deep_supervision
    with pytest.raises(FusionsegError, match="trains SingleBranchUNet"):
        fst.nnUNetTrainerFusionsegSingle.build_network_architecture(pm, cm, 1, 2, False)


def test_backend_variable_is_checked(monkeypatch):
    monkeypatch.setenv("FUSIONSEG_BACKEND", "fastest")
    pm, cm = _managers(PLANS)
    with pytest.raises(FusionsegError, match="FUSIONSEG_BACKEND='fastest'"):
        fst.nnUNetTrainernew.build_network_architecture(pm, cm, 1, 2, False)


def test_patch_that_does_not_fit_is_refused(monkeypatch):
    plans = copy.deepcopy(PLANS)
    plans["configurations"]["3d_fullres"]["patch_size"] = [20, 48, 48]
    pm, cm = _managers(plans)
    with pytest.raises(FusionsegError, match="--patch 24 48 48"):
        fst.nnUNetTrainernew.build_network_architecture(pm, cm, 1, 2, False)


def test_deep_supervision_outputs_match_nnunet_scales():
    """Four heads, highest resolution first, at the resolutions nnU-Net's trainer downsamples the
    targets to (1 / cumprod(strides), last dropped); nnU-Net's DeepSupervisionWrapper trains them."""
    torch.manual_seed(0)
    net = DualBranchUNet(features_per_stage=TINY, deep_supervision=True, backend="cpu")
    x = torch.randn(2, 1, 16, 32, 32)
    outs = net(x)
    scales = list(list(i) for i in 1 / np.cumprod(np.vstack(net.strides), axis=0))[:-1]
    assert len(outs) == len(scales) == 4
    for out, scale in zip(outs, scales):
        assert tuple(out.shape[2:]) == tuple(int(round(s * f)) for s, f in zip(x.shape[2:], scale))
    targets = [torch.randint(0, 2, (2, 1, *o.shape[2:])).float() for o in outs]
    weights = np.array([1 / 2 ** i for i in range(4)])
    weights[-1] = 0
    loss = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False}, {}),
                                  weights / weights.sum())
    loss(outs, targets).backward()
    # nnU-Net gives the lowest resolution (seg_layers[0]) weight 0 and skips it
    assert [h.weight.grad is not None for h in net.decoder.seg_layers] == [False, True, True, True]
    # nnU-Net's switch, as nnUNetTrainer.set_deep_supervision_enabled does it
    net.decoder.deep_supervision = False
    with torch.no_grad():
        single = net(x)
    assert isinstance(single, torch.Tensor) and torch.allclose(single, outs[0].detach(), atol=1e-5)
    assert net.decoder.unused_heads() == list(net.decoder.seg_layers[:3])


def test_load_state_dict_accepts_released_and_clean_forms():
    a, b, c = (DualBranchUNet(features_per_stage=TINY) for _ in range(3))
    released = {"module." + k: v for k, v in a.released_state_dict().items()}
    result = b.load_state_dict(released)  # what nnU-Net's predictor calls
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c.load_state_dict(a.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    bad = dict(a.released_state_dict())
    del bad["decoder.seg_layers.3.bias"]
    with pytest.raises(ReleasedStateDictError, match="decoder.seg_layers.3.bias"):
        c.load_state_dict(bad)
    with pytest.raises(RuntimeError, match="Missing key"):
        c.load_state_dict({k: v for k, v in a.state_dict().items() if k != "decoder.seg_layers.3.bias"})


# --- the trainer ----------------------------------------------------------------------------

@pytest.fixture
def trainer_env(tmp_path, monkeypatch):
    """nnU-Net's folders in tmp_path and fusionseg plans for a tiny network; the preprocessed
    folder holds one file so that nnU-Net can tell its dataset format."""
    pre = tmp_path / "preprocessed"
    folder = write_dataset_folder(pre / "Dataset901_Tiny")
    (folder / "nnUNetPlans_3d_fullres").mkdir()
    (folder / "nnUNetPlans_3d_fullres" / "case000.b2nd").write_bytes(b"")
    plans = json.loads(rewrite_plans(folder, patch_size=(16, 32, 32), features=TINY).read_text())
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("FUSIONSEG_BACKEND", "cpu")
    for var in ("FUSIONSEG_NUM_EPOCHS", "FUSIONSEG_ITERATIONS_PER_EPOCH", "FUSIONSEG_VAL_ITERATIONS_PER_EPOCH"):
        monkeypatch.delenv(var, raising=False)
    return plans


def _plans(plans, continue_training=False):
    return dict(copy.deepcopy(plans), continue_training=continue_training)  # set by nnUNetv2_train


def _trainer(cls, plans, initialize=True, continue_training=False):
    trainer = cls(_plans(plans, continue_training), "3d_fullres", 0, DATASET_JSON, torch.device("cpu"))
    if initialize:
        trainer.initialize()
    return trainer


def _batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.zeros(2, 1, 16, 32, 32)
    target[:, :, 4:12, 8:24, 8:24] = 1
    return {"data": torch.randn(2, 1, 16, 32, 32, generator=gen) + 2 * target, "target": target}


def test_release_recipe(trainer_env):
    trainer = _trainer(fst.nnUNetTrainernew, trainer_env)
    assert type(trainer.network) is DualBranchUNet and not trainer.network.deep_supervision
    opt = trainer.optimizer
    assert type(opt) is torch.optim.AdamW
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["eps"]) == (8e-4, 0.01, 1e-5)
    assert len(group["params"]) == len(list(trainer.network.parameters()))  # same indices as the release
    sched = trainer.lr_scheduler
    assert type(sched) is PolyLRScheduler and sched.exponent == 1.0 and sched.max_steps == 2000 == trainer.num_epochs
    sched.step(1000)
    assert group["lr"] == pytest.approx(4e-4)  # linear decay: exponent 1
    assert (trainer.num_iterations_per_epoch, trainer.enable_deep_supervision) == (250, False)
    assert type(trainer.loss) is DC_and_CE_loss  # Dice + CE, no deep-supervision wrapper
    trainer.set_deep_supervision_enabled(True)  # what nnU-Net does after its final validation
    assert not trainer.network.deep_supervision
    # unused heads are frozen (no gradient either way; DDP would otherwise wait for them)
    heads = trainer.network.decoder.seg_layers
    assert [h.weight.requires_grad for h in heads] == [False, False, False, True]


def test_training_length_from_environment(trainer_env, monkeypatch):
    monkeypatch.setenv("FUSIONSEG_NUM_EPOCHS", "3")
    monkeypatch.setenv("FUSIONSEG_ITERATIONS_PER_EPOCH", "2")
    monkeypatch.setenv("FUSIONSEG_VAL_ITERATIONS_PER_EPOCH", "1")
    trainer = _trainer(fst.nnUNetTrainernew, trainer_env)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (3, 2, 1)
    assert trainer.lr_scheduler.max_steps == 3
    monkeypatch.setenv("FUSIONSEG_NUM_EPOCHS", "zero")
    with pytest.raises(FusionsegError, match="FUSIONSEG_NUM_EPOCHS"):
        _trainer(fst.nnUNetTrainernew, trainer_env, initialize=False)


def test_train_step_and_released_form_checkpoint(trainer_env, tmp_path):
    trainer = _trainer(fst.nnUNetTrainernew, trainer_env)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    out = trainer.train_step(_batch())
    assert np.isfinite(out["loss"])
    changed = [not torch.equal(p, q) for p, q in zip(before, trainer.network.parameters())]
    heads = {id(p) for h in trainer.network.decoder.seg_layers[:3] for p in h.parameters()}
    for c, p in zip(changed, trainer.network.parameters()):
        assert c == (id(p) not in heads)  # everything trains except the unused heads
    path = tmp_path / "checkpoint.pth"
    trainer.save_checkpoint(str(path))
    ckpt = torch.load(path, weights_only=False)
    weights = ckpt["network_weights"]
    assert list(weights) == list(trainer.network.released_state_dict())
    assert ckpt["trainer_name"] == "nnUNetTrainernew"
    assert len(trainer.network.state_dict()) < len(weights)  # the network itself is unchanged
    # nnU-Net's predictor: build from the plans, then load_state_dict(network_weights)
    pm, cm = _managers(trainer_env)
    net = fst.nnUNetTrainernew.build_network_architecture(pm, cm, 1, 2, enable_deep_supervision=False)
    net.load_state_dict(weights)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), trainer.network.parameters()))
    # continuing training (nnU-Net's load_checkpoint) takes the same file
    again = _trainer(fst.nnUNetTrainernew, trainer_env, initialize=False, continue_training=True)
    again.load_checkpoint(str(path))
    assert all(torch.equal(p, q) for p, q in zip(again.network.parameters(), trainer.network.parameters()))


def test_bf16_trainer_autocasts_on_cpu(trainer_env):
    trainer = _trainer(fst.nnUNetTrainernew_bf16, trainer_env)
    assert trainer.grad_scaler is None
    dtypes = []
    hook = trainer.network.decoder.seg_layers[-1].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    out = trainer.train_step(_batch())
    val = trainer.validation_step(_batch(1))
    hook.remove()
    assert np.isfinite(out["loss"]) and np.isfinite(val["loss"])
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in trainer.network.parameters())
    # the float32 trainer on the CPU does not autocast
    plain = _trainer(fst.nnUNetTrainernew, trainer_env)
    dtypes.clear()
    plain.network.decoder.seg_layers[-1].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    plain.train_step(_batch())
    assert dtypes == [torch.float32]
