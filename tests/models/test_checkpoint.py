"""Reading nnU-Net checkpoints safely (weights_only with an allow-list) and rebuilding their network."""
from __future__ import annotations

import argparse
import pickle

import numpy as np
import pytest
import torch

from tests.helpers import rel_l2

from fusionseg_kernels.errors import CheckpointError
from fusionseg_kernels.models import (CHECKPOINT_SAFE_GLOBALS, DualBranchUNet, PlainConvUNet,
                                      ReleasedStateDictError, SingleBranchUNet, infer_network_from_state_dict,
                                      load_nnunet_checkpoint, read_nnunet_checkpoint)
from fusionseg_kernels.models.checkpoint import _NUMPY_DTYPES

TINY_FEATURES = (16, 32, 32, 64, 64)


@pytest.fixture(scope="module")
def fixture():
    from tests.helpers import DATA_DIR

    return torch.load(DATA_DIR / "dual_branch_tiny_conformance.pt", weights_only=True)


def nnunet_checkpoint(network_weights, model_for_optimizer=None):
    """A checkpoint with the structure nnU-Net v2 (2.6) writes: tensors, plain containers, numpy
    scalars and arrays (logging, _best_ema) and a torch.device (init_args)."""
    optimizer_state = None
    if model_for_optimizer is not None:
        opt = torch.optim.AdamW(model_for_optimizer.parameters(), lr=8e-4, weight_decay=0.01, eps=1e-5)
        for p in model_for_optimizer.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        optimizer_state = opt.state_dict()
    plans = {"dataset_name": "Dataset100_FLARE25", "configurations": {"3d_fullres": {
        "patch_size": [96, 128, 128], "spacing": [3.0, 2.0, 2.0], "batch_size": 2}}}
    return {
        "network_weights": network_weights,
        "optimizer_state": optimizer_state,
        "grad_scaler_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                              "growth_interval": 2000, "_growth_tracker": 17},
        "logging": {
            "mean_fg_dice": [np.float64(0.11), np.float64(0.13)],
            "ema_fg_dice": [np.float64(0.11), np.float64(0.112)],
            "dice_per_class_or_region": [[np.float32(0.11)], [np.float32(0.13)]],
            "train_losses": [np.float32(0.8), np.float32(0.7)],
            "val_losses": [np.float64(0.9), np.float64(0.85)],
            "lrs": [0.0008, 0.00079],
            "epoch_start_timestamps": [1.7e9, 1.7e9 + 100],
            "epoch_end_timestamps": [1.7e9 + 99, 1.7e9 + 199],
            "per_case_dice": np.array([[0.1, 0.2], [0.3, 0.4]]),
            "case_counts": np.arange(4, dtype=np.int64),
        },
        "_best_ema": np.float64(0.112),
        "current_epoch": 2,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                      "dataset_json": {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1}},
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainernew",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def test_checkpoint_needs_the_allow_list(tmp_path, fixture):
    path = tmp_path / "checkpoint_final.pth"
    torch.save(nnunet_checkpoint(fixture["state_dict"]), path)
    # plain weights_only loading refuses the numpy objects: the allow-list is what makes it load
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    ckpt = read_nnunet_checkpoint(path)
    # nothing allowed globally (torch registers its own types lazily, so compare ours only)
    ours = {g if not isinstance(g, tuple) else g[0] for g in CHECKPOINT_SAFE_GLOBALS}
    after = {g if not isinstance(g, tuple) else g[0] for g in torch.serialization.get_safe_globals()}
    assert not ours & after
    assert ckpt["_best_ema"] == np.float64(0.112) and isinstance(ckpt["_best_ema"], np.float64)
    assert isinstance(ckpt["logging"]["train_losses"][0], np.float32)
    np.testing.assert_array_equal(ckpt["logging"]["per_case_dice"], [[0.1, 0.2], [0.3, 0.4]])
    assert ckpt["logging"]["case_counts"].dtype == np.int64
    assert ckpt["init_args"]["device"] == torch.device("cpu")
    assert ckpt["inference_allowed_mirroring_axes"] == (0, 1, 2)


def test_load_nnunet_checkpoint_reproduces_logits(tmp_path, fixture):
    path = tmp_path / "checkpoint_final.pth"
    model = DualBranchUNet(features_per_stage=TINY_FEATURES)
    torch.save(nnunet_checkpoint(fixture["state_dict"], model_for_optimizer=model), path)
    loaded = load_nnunet_checkpoint(path, backend="cpu")
    assert isinstance(loaded, DualBranchUNet) and not loaded.training and loaded.backend == "cpu"
    assert loaded.features_per_stage == TINY_FEATURES
    assert loaded.checkpoint_info == {"trainer_name": "nnUNetTrainernew", "current_epoch": 2,
                                      "inference_allowed_mirroring_axes": (0, 1, 2)}
    with torch.no_grad():
        logits = loaded(fixture["input"])
    assert rel_l2(logits, fixture["expected_logits_float64"]) < 1e-5


def test_refuses_other_pickled_objects(tmp_path, fixture):
    path = tmp_path / "checkpoint_final.pth"
    ckpt = nnunet_checkpoint(fixture["state_dict"])
    ckpt["init_args"]["args"] = argparse.Namespace(fold=0)  # an arbitrary class: must not be built
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"holds code \(a pickled argparse.Namespace\), which was not run"):
        read_nnunet_checkpoint(path)


def test_allow_list_is_exactly_numpy_and_device():
    names = set()
    for entry in CHECKPOINT_SAFE_GLOBALS:
        obj = entry[0] if isinstance(entry, tuple) else entry
        names.add(entry[1] if isinstance(entry, tuple) else f"{obj.__module__}.{obj.__qualname__}")
    numpy_dtype_classes = {f"{type(np.dtype(t)).__module__}.{type(np.dtype(t)).__qualname__}" for t in _NUMPY_DTYPES}
    expected = ({f"{m}.multiarray.{f}" for m in ("numpy.core", "numpy._core") for f in ("_reconstruct", "scalar")}
                | {"numpy.ndarray", "numpy.dtype", "torch.device"} | numpy_dtype_classes)
    assert names == expected


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="weights.pth is not an nnU-Net checkpoint"):
        read_nnunet_checkpoint(path)


@pytest.mark.parametrize("damage, words", [
    ("missing", "no such checkpoint file"),
    ("empty", "is empty (0 bytes)"),
    ("text", "is not a readable PyTorch checkpoint"),
    ("truncated", "is not a readable PyTorch checkpoint"),
    ("corrupted", "is not a readable PyTorch checkpoint"),
])
def test_unreadable_checkpoints_say_which_file_and_what_is_wrong(tmp_path, damage, words):
    good = tmp_path / "good.pth"
    torch.save(nnunet_checkpoint(DualBranchUNet(features_per_stage=TINY_FEATURES).released_state_dict()), good)
    data = good.read_bytes()
    path = tmp_path / "checkpoint_final.pth"
    content = {"empty": b"", "text": b"this is a text file\n", "truncated": data[: len(data) // 2],
               "corrupted": data[:1000] + bytes(300) + data[1300:]}
    if damage != "missing":
        path.write_bytes(content[damage])
    for reader in (read_nnunet_checkpoint, load_nnunet_checkpoint):
        with pytest.raises(CheckpointError) as info:
            reader(path)
        message = str(info.value)
        assert str(path) in message and words in message, message
        assert "\n" not in message and info.value.__cause__ is None


def test_unknown_network_name(tmp_path, fixture):
    path = tmp_path / "checkpoint_final.pth"
    torch.save(nnunet_checkpoint(fixture["state_dict"]), path)
    with pytest.raises(CheckpointError, match="unknown network 'bogus'; choose 'auto' or one of dual, single, plain"):
        load_nnunet_checkpoint(path, network="bogus")


def test_tampered_head_is_named_as_the_odd_one_out(tmp_path, fixture):
    weights = dict(fixture["state_dict"])
    last = max(int(k.split(".")[2]) for k in weights if k.startswith("decoder.seg_layers."))
    head = f"decoder.seg_layers.{last}.weight"
    weights[head] = torch.randn(3, *weights[head].shape[1:])
    weights[f"decoder.seg_layers.{last}.bias"] = torch.randn(3)
    path = tmp_path / "checkpoint_final.pth"
    torch.save(nnunet_checkpoint(weights), path)
    with pytest.raises(CheckpointError) as info:
        load_nnunet_checkpoint(path)
    message = str(info.value)
    assert f"decoder.seg_layers.{last}.weight has 3 classes" in message and "have 2" in message
    assert "decoder.seg_layers.0.weight" not in message


@pytest.mark.parametrize("cls, kwargs", [
    (DualBranchUNet, {}),
    (SingleBranchUNet, {}),
    (PlainConvUNet, {}),
    (PlainConvUNet, {"features_per_stage": (8, 16, 24), "strides": ((1, 1, 1), (1, 2, 2), (2, 2, 2)),
                     "kernel_sizes": ((1, 3, 3), (3, 3, 3), (3, 3, 3)), "n_conv_per_stage": (1, 2, 3),
                     "n_conv_per_stage_decoder": (2, 1), "input_channels": 3, "num_classes": 4}),
    (SingleBranchUNet, {"features_per_stage": (16, 32, 32), "strides": ((1, 1, 1), (2, 2, 2), (1, 2, 2))}),
])
def test_infer_network_from_weights(cls, kwargs, tmp_path):
    model = cls(**kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    weights = {"module." + k: v for k, v in model.released_state_dict().items()}  # a DDP-saved file
    inferred_cls, inferred = infer_network_from_state_dict(weights)
    assert inferred_cls is cls
    rebuilt = inferred_cls(**inferred)
    assert rebuilt.config == model.config
    path = tmp_path / "checkpoint_best.pth"
    torch.save(nnunet_checkpoint(weights), path)
    loaded = load_nnunet_checkpoint(path)
    assert type(loaded) is cls
    for (k, v), w in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(v, w), k


def test_forced_wrong_network_names_every_tensor(tmp_path, fixture):
    path = tmp_path / "checkpoint_final.pth"
    torch.save(nnunet_checkpoint(fixture["state_dict"]), path)
    with pytest.raises(ReleasedStateDictError) as info:
        load_nnunet_checkpoint(path, network="single")
    msg = str(info.value)
    assert "encoder.stages.0.0.residual_branch.shortcut.conv.conv.dwconv_hwd.weight" in msg
    assert "missing" in msg and "match no layer" in msg
