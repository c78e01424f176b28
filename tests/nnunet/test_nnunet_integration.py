"""End to end with nnU-Net v2's own commands on the CPU: a synthetic raw dataset ->
nnUNetv2_plan_and_preprocess -> fusionseg nnunet-plans (small patch and features) ->
nnUNetv2_train with nnUNetTrainernew for two iterations -> nnUNetv2_predict on a held-out case,
and `fusionseg predict --mode exact` on the same model folder, whose mask must match."""
from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest

pytest.importorskip("nnunetv2")
sitk = pytest.importorskip("SimpleITK")

from fusionseg_kernels.data import synth  # noqa: E402
from tests.nnunet.support import BIN, nnunet_environment  # noqa: E402

DATASET = "Dataset901_Synth"
SPACING = (3.0, 4.0, 4.0)
TRAIN_SIZE = (16, 32, 32)     # one patch per case: quick validation
TEST_SIZE = (24, 40, 48)      # several overlapping tiles, sizes not multiples of the patch
PATCH = ("16", "32", "32")
FEATURES = ("16", "32", "32", "64", "64")
PLANS = "nnUNetPlans_fusionseg"


def _run(cmd, env, timeout, log):
    start = time.perf_counter()
    out = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)
    log.append((" ".join(str(c) for c in cmd[:3]), round(time.perf_counter() - start, 1)))
    assert out.returncode == 0, f"{cmd[0]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    raw, pre, res = root / "raw", root / "preprocessed", root / "results"
    env = nnunet_environment(root, iterations=2)
    log: list = []
    cases = synth.write_dataset(raw / DATASET, n=5, size=TRAIN_SIZE, spacing=SPACING, seed=1)
    test_case = synth.synthesize_ct(TEST_SIZE, SPACING, seed=50)
    (raw / DATASET / "imagesTs").mkdir()
    synth.write_case(test_case, raw / DATASET / "imagesTs" / "heldout_0000.nii.gz")

    _run([BIN / "nnUNetv2_plan_and_preprocess", "-d", "901", "-c", "3d_fullres", "-np", "1", "-npfp", "1"],
         env, 600, log)
    _run([BIN / "fusionseg", "nnunet-plans", "901", "--patch", *PATCH, "--features", *FEATURES], env, 300, log)
    # one validation case keeps nnU-Net's final validation short
    (pre / DATASET / "splits_final.json").write_text(json.dumps([{"train": cases[:4], "val": cases[4:]}]))
    # data augmentation in the training process itself (nnU-Net's planner needs this unset)
    train = _run([BIN / "nnUNetv2_train", "901", "3d_fullres", "0", "-tr", "nnUNetTrainernew", "-p", PLANS,
                  "-device", "cpu"], dict(env, nnUNet_n_proc_DA="0"), 900, log)
    model = res / DATASET / f"nnUNetTrainernew__{PLANS}__3d_fullres"
    _run([BIN / "nnUNetv2_predict", "-i", raw / DATASET / "imagesTs", "-o", root / "pred_nnunet", "-d", "901",
          "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainernew", "-p", PLANS, "-device", "cpu",
          "--disable_tta", "-npp", "1", "-nps", "1"], env, 600, log)
    print("\nstep times (s):", log)
    return dict(root=root, model=model, env=env, log=log, train_out=train.stdout, test_case=test_case,
                input=raw / DATASET / "imagesTs")


@pytest.mark.slow
def test_train_with_nnunet_commands(pipeline):
    import torch

    from fusionseg_kernels.models import DualBranchUNet

    fold = pipeline["model"] / "fold_0"
    assert "Using trainer 'nnUNetTrainernew' from:" in pipeline["train_out"]
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainernew" and ckpt["current_epoch"] == 1
    net = DualBranchUNet(features_per_stage=[int(f) for f in FEATURES])
    assert list(ckpt["network_weights"]) == list(net.released_state_dict())  # released form
    assert type(ckpt["optimizer_state"]["param_groups"][0]["lr"]) is float
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert "foreground_mean" in summary


@pytest.mark.slow
def test_nnunet_predict_writes_a_mask_with_the_input_geometry(pipeline):
    mask_file = pipeline["root"] / "pred_nnunet" / "heldout.nii.gz"
    mask = sitk.ReadImage(str(mask_file))
    image = sitk.ReadImage(str(pipeline["input"] / "heldout_0000.nii.gz"))
    assert mask.GetSize() == image.GetSize() and np.allclose(mask.GetSpacing(), image.GetSpacing())
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}


@pytest.mark.slow
def test_fusionseg_predict_exact_matches_nnunet_predict(pipeline):
    cli = subprocess.run(["fusionseg", "predict", "--help"], env=pipeline["env"], capture_output=True, text=True)
    if cli.returncode != 0 or "--mode" not in cli.stdout:
        pytest.skip("fusionseg predict --mode exact is not available in this build")
    out = pipeline["root"] / "pred_fusionseg"
    _run([BIN / "fusionseg", "predict", "-i", pipeline["input"], "-o", out, "-m", pipeline["model"],
          "--mode", "exact", "--device", "cpu", "--backend", "cpu", "-f", "0", "--quiet"],
         pipeline["env"], 600, pipeline["log"])
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "heldout.nii.gz")))
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(pipeline["root"] / "pred_nnunet" / "heldout.nii.gz")))
    assert ours.shape == theirs.shape
    differ = int((ours != theirs).sum())
    print(f"\nexact vs nnUNetv2_predict: {differ} of {ours.size} voxels differ; foreground "
          f"{int(theirs.sum())} voxels (nnU-Net), {int(ours.sum())} (fusionseg)")
    assert differ <= 1e-4 * ours.size, f"{differ} of {ours.size} voxels differ"
