"""`fusionseg nnunet-plans`: an nnU-Net plans file rewritten so that 3d_fullres builds one of this
package's networks, checked by building it the way nnU-Net does."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

from fusionseg_kernels.cli import main
from fusionseg_kernels.errors import FusionsegError
from fusionseg_kernels.models import DualBranchUNet, PlainConvUNet, SingleBranchUNet
from fusionseg_kernels.nnunet import PlansError, rewrite_plans

# What nnUNetv2_plan_and_preprocess writes for a 24x48x48 dataset at spacing (3, 2, 2) (its 2d
# configuration left out): nnU-Net's PlainConvUNet with 4 stages.
PLANS = {
    "dataset_name": "Dataset901_Tiny", "plans_name": "nnUNetPlans",
    "original_median_spacing_after_transp": [3.0, 2.0, 2.0], "original_median_shape_after_transp": [24, 48, 48],
    "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
    "configurations": {"3d_fullres": {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [24, 48, 48], "median_image_size_in_voxels": [24.0, 48.0, 48.0], "spacing": [3.0, 2.0, 2.0],
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": 4, "features_per_stage": [32, 64, 128, 256], "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * 4, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                "n_conv_per_stage": [2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2], "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False}},
    "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {"0": {
        "max": 115.5, "mean": 49.8, "median": 49.6, "min": -12.2, "percentile_00_5": -0.09,
        "percentile_99_5": 103.0, "std": 20.1}},
}
DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 6,
                "file_ending": ".nii.gz"}


def write_dataset_folder(folder, plans=PLANS):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    return folder


def nnunet_network(plans_file, configuration="3d_fullres", deep_supervision=False):
    """The network nnU-Net's own code builds from a plans file."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(str(plans_file)).get_configuration(configuration)
    return get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, 1, 2, deep_supervision=deep_supervision)


def test_rewrite_released_network(tmp_path):
    folder = write_dataset_folder(tmp_path / "Dataset901_Tiny")
    source_before = (folder / "nnUNetPlans.json").read_text()
    out = rewrite_plans(folder)
    assert out == folder / "nnUNetPlans_fusionseg.json"
    assert (folder / "nnUNetPlans.json").read_text() == source_before  # source untouched
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "nnUNetPlans.json", "nnUNetPlans_fusionseg.json"]
    plans = json.loads(out.read_text())
    assert plans["plans_name"] == "nnUNetPlans_fusionseg"
    config = plans["configurations"]["3d_fullres"]
    assert config["data_identifier"] == "nnUNetPlans_3d_fullres"  # preprocessed data reused
    assert config["architecture"]["network_class_name"] == "fusionseg_kernels.models.DualBranchUNet"
    model = nnunet_network(out)
    assert type(model) is DualBranchUNet
    assert sum(p.numel() for p in model.parameters()) == 8_227_320
    assert model.config == DualBranchUNet().config
    assert not model.deep_supervision
    # everything but the plans name and that architecture is copied
    expected = copy.deepcopy(PLANS)
    expected["plans_name"] = "nnUNetPlans_fusionseg"
    expected["configurations"]["3d_fullres"]["architecture"] = config["architecture"]
    assert plans == expected


def test_rewrite_with_patch_features_batch_and_other_networks(tmp_path):
    folder = write_dataset_folder(tmp_path / "D")
    out = rewrite_plans(folder / "nnUNetPlans.json", network="single", plans_name="P_single",
                        patch_size=(16, 32, 32), features=(16, 32, 32, 64, 64), batch_size=3)
    config = json.loads(out.read_text())["configurations"]["3d_fullres"]
    assert config["patch_size"] == [16, 32, 32] and config["batch_size"] == 3
    model = nnunet_network(out, deep_supervision=True)
    assert type(model) is SingleBranchUNet and model.features_per_stage == (16, 32, 32, 64, 64)
    assert model.deep_supervision
    # the plain network keeps what nnU-Net planned for the dataset (4 stages here)
    out = rewrite_plans(folder, network="plain", plans_name="P_plain")
    model = nnunet_network(out)
    assert type(model) is PlainConvUNet and model.features_per_stage == (32, 64, 128, 256)
    assert model.config["conv_bias"] and model.config["norm_affine"]


def test_dataset_id_is_looked_up_in_nnunet_preprocessed(tmp_path, monkeypatch):
    write_dataset_folder(tmp_path / "Dataset901_Tiny")
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    assert rewrite_plans("901") == tmp_path / "Dataset901_Tiny" / "nnUNetPlans_fusionseg.json"
    assert rewrite_plans("Dataset901_Tiny", plans_name="X").name == "X.json"


@pytest.mark.parametrize("kwargs, match", [
    ({"patch_size": (16, 32, 30)}, r"--patch 16 32 32"),
    ({"patch_size": (8, 16, 16)}, r"--patch 8 16 32"),
    ({"features": (16, 32)}, "one per stage"),
    ({"features": (15, 32, 32, 64, 64)}, "even"),
    ({"plans_name": "nnUNetPlans"}, "differ"),
    ({"configuration": "2d"}, "no configuration"),
    ({"network": "triple"}, "unknown network"),
])
def test_rewrite_refuses_what_would_not_train(tmp_path, kwargs, match):
    folder = write_dataset_folder(tmp_path / "D")
    with pytest.raises(FusionsegError, match=match):
        rewrite_plans(folder, **kwargs)
    assert not (folder / "nnUNetPlans_fusionseg.json").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "nnUNetPlans.json"]  # no temporary left


def test_rewrite_errors_for_missing_files(tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    with pytest.raises(PlansError, match="does not exist"):
        rewrite_plans(tmp_path)
    with pytest.raises(PlansError, match="nnUNet_preprocessed is not set"):
        rewrite_plans("Dataset123_None")
    (tmp_path / "nnUNetPlans.json").write_text("{not json")
    with pytest.raises(PlansError, match="not valid JSON"):
        rewrite_plans(tmp_path)


def test_cli_nnunet_plans(tmp_path, capsys):
    folder = write_dataset_folder(tmp_path / "D")
    assert main(["nnunet-plans", str(folder), "--patch", "16", "32", "32", "--features", "16", "32", "32", "64", "64"]) == 0
    assert "nnUNetPlans_fusionseg.json" in capsys.readouterr().out
    assert main(["nnunet-plans", str(folder), "--patch", "16", "32", "30"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fusionseg nnunet-plans: error: patch size") and "\n" not in err


def test_cli_nnunet_env_makes_nnunet_find_the_trainer():
    """`eval "$(fusionseg nnunet-env)"` in a shell, then nnU-Net's own lookup in that shell."""
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    script = ('eval "$(fusionseg nnunet-env)" && echo "$nnUNet_extTrainer" && python -c "'
              'from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; '
              'c = f(\'nnUNetTrainernew\'); print(c.__module__, c.__name__)"')
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].endswith(os.path.join("fusionseg_kernels", "nnunet", "ext_trainers"))
    assert lines[-1] == "fusionseg_kernels.nnunet.trainers nnUNetTrainernew"
