"""Shared by the nnU-Net tests: plans and dataset.json as nnU-Net writes them, and the environment
of a run of nnU-Net's own commands on the CPU."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fusionseg_kernels.nnunet import ext_trainer_value

#: the folder of this interpreter's scripts (nnUNetv2_*, fusionseg)
BIN = Path(sys.executable).parent


def nnunet_environment(root: Path, iterations: int = 1) -> dict:
    """nnU-Net's three folders under `root`, this package's trainers found, one CPU thread, one
    epoch of `iterations` training iterations and one validation iteration."""
    return dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
                nnUNet_results=str(root / "results"), nnUNet_extTrainer=ext_trainer_value(""), nnUNet_def_n_proc="1",
                nnUNet_compile="0", FUSIONSEG_BACKEND="cpu", FUSIONSEG_NUM_THREADS="1", OMP_NUM_THREADS="1",
                FUSIONSEG_NUM_EPOCHS="1", FUSIONSEG_ITERATIONS_PER_EPOCH=str(iterations),
                FUSIONSEG_VAL_ITERATIONS_PER_EPOCH="1", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


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
