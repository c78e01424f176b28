"""nnU-Net v2 model folders: reading one (plans, dataset, folds, network) and writing one.

A model folder holds ``plans.json``, ``dataset.json`` and ``fold_<f>/checkpoint_final.pth`` (or
``checkpoint_best.pth``) for one or more folds — what ``nnUNetv2_train`` leaves behind and what
``nnUNetv2_predict -d/-tr/-p/-c`` or ``nnUNetv2_predict_from_modelfolder`` reads.

The network is the one `fusionseg_kernels.nnunet.architecture` decides from the checkpoint's
trainer name and the plans' configuration: the rule this package's nnU-Net trainers use, so
``fusionseg predict`` and ``nnUNetv2_predict`` build the same network from the same folder.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from fusionseg_kernels import atomic, imageio
from fusionseg_kernels.errors import CheckpointError, ModelFolderError, PlansError
from fusionseg_kernels.nnunet.architecture import (RELEASED_TRAINER, architecture_entry, build_network, network_spec,
                                                   released_arch_kwargs)

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")

#: CT intensity statistics of the release's foreground (used by CTNormalization)
RELEASED_INTENSITY_PROPERTIES = {
    "max": 3071.0, "mean": -43.0046, "median": -20.0, "min": -1024.0,
    "percentile_00_5": -893.0, "percentile_99_5": 578.0, "std": 262.2776,
}


def released_plans(patch_size: Sequence[int] = (96, 128, 128),
                   features_per_stage: Sequence[int] = (32, 64, 128, 256, 320),
                   strides: Sequence[Sequence[int]] = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
                   spacing: Sequence[float] = (3.0, 2.0, 2.0),
                   dataset_name: str = "Dataset025_FLARE25Lesion") -> dict:
    """Plans in nnU-Net 2.8's ``plans.json`` format with the release's ``3d_fullres`` settings
    (spacing, patch, CT normalization, resampling functions), naming this package's
    ``DualBranchUNet`` with the given sizes (as ``fusionseg nnunet-plans`` writes them). Patch and
    features may be reduced for tests and demos; every stage has 3x3x3 kernels and two convolutions."""
    arch_kwargs = released_arch_kwargs("dual", features_per_stage, strides)
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [int(p) for p in patch_size],
        "median_image_size_in_voxels": [200.0, 256.0, 256.0],
        "spacing": [float(s) for s in spacing],
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "architecture": architecture_entry("dual", arch_kwargs),
        "batch_dice": False,
    }
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [2.5, 0.8, 0.8],
        "original_median_shape_after_transp": [240, 512, 512],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": dict(RELEASED_INTENSITY_PROPERTIES)},
    }


def released_dataset_json(num_training: int = 0) -> dict:
    """The release's dataset.json: one CT channel, background 0 and lesion 1."""
    return imageio.dataset_json(num_training)


def create_model_folder(folder: str | os.PathLike, networks: torch.nn.Module | Sequence[torch.nn.Module],
                        plans: dict | None = None, dataset_json: dict | None = None,
                        folds: Iterable[int | str] | None = None, trainer_name: str = RELEASED_TRAINER,
                        configuration: str = "3d_fullres", checkpoint_name: str = "checkpoint_final.pth",
                        mirroring_axes: tuple[int, ...] | None = (0, 1, 2)) -> Path:
    """Writes an nnU-Net model folder for ``networks`` (one per fold; one network is used for every
    fold): ``plans.json`` (default `released_plans`), ``dataset.json`` and
    ``fold_<f>/<checkpoint_name>`` in nnU-Net's checkpoint layout. Networks of this package are
    stored with their released state-dict keys (``released_state_dict()``), others with
    ``state_dict()``. Returns the folder."""
    folder = Path(folder)
    nets = [networks] if isinstance(networks, torch.nn.Module) else list(networks)
    folds = list(folds) if folds is not None else list(range(len(nets)))
    if len(nets) == 1 and len(folds) > 1:
        nets = nets * len(folds)
    if len(nets) != len(folds):
        raise ValueError(f"{len(nets)} networks for {len(folds)} folds")
    plans = copy.deepcopy(plans) if plans is not None else released_plans()
    dataset_json = copy.deepcopy(dataset_json) if dataset_json is not None else released_dataset_json()
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_json(folder / "plans.json", plans, indent=4)
    atomic.write_json(folder / "dataset.json", dataset_json, indent=4)
    for fold, net in zip(folds, nets):
        weights = net.released_state_dict() if hasattr(net, "released_state_dict") else net.state_dict()
        checkpoint = {
            "network_weights": {k: v.detach().cpu() for k, v in weights.items()},
            "optimizer_state": {},
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.0)], "ema_fg_dice": [np.float64(0.0)],
                        "train_losses": [0.0], "val_losses": [0.0]},
            "_best_ema": np.float64(0.0),
            "current_epoch": 0,
            "init_args": {"plans": plans, "configuration": configuration, "fold": fold,
                          "dataset_json": dataset_json, "device": torch.device("cpu")},
            "trainer_name": trainer_name,
            "inference_allowed_mirroring_axes": tuple(mirroring_axes) if mirroring_axes is not None else None,
        }
        fold_dir = folder / f"fold_{fold}"
        fold_dir.mkdir(exist_ok=True)
        with atomic.atomic_output(fold_dir / checkpoint_name) as tmp:
            torch.save(checkpoint, tmp)
    return folder


# ----------------------------------------------------------------------------------------------
@dataclass
class ModelBundle:
    """Everything inference needs from a model folder."""

    folder: Path
    plans: dict
    dataset_json: dict
    configuration_name: str
    configuration: dict
    network: torch.nn.Module
    fold_weights: list[dict[str, torch.Tensor]]   # the network's own state dicts, one per fold
    folds: list[str]
    checkpoint_files: list[Path]
    trainer_name: str | None
    mirroring_axes: tuple[int, ...] | None
    num_classes: int
    input_channels: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.configuration["patch_size"])

    @property
    def target_spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in self.configuration["spacing"])

    @property
    def transpose_forward(self) -> list[int]:
        return [int(i) for i in self.plans.get("transpose_forward", [0, 1, 2])]

    @property
    def transpose_backward(self) -> list[int]:
        return [int(i) for i in self.plans.get("transpose_backward", [0, 1, 2])]


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ModelFolderError(f"{path} is missing: a model folder needs {what}.")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{path} is not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} does not hold a JSON object.")
    return data


def find_checkpoints(folder: Path, folds: Sequence[str] | None) -> list[tuple[str, Path]]:
    """(fold, checkpoint file) pairs: ``checkpoint_final.pth``, else ``checkpoint_best.pth``."""
    if folds is None:
        names = sorted((p.name[5:] for p in folder.glob("fold_*") if p.is_dir()),
                       key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))
        numbered = [f for f in names if f != "all"]
        candidates = numbered or names
        found = []
        for f in candidates:
            for name in CHECKPOINT_NAMES:
                if (folder / f"fold_{f}" / name).is_file():
                    found.append((f, folder / f"fold_{f}" / name))
                    break
        if not found:
            raise ModelFolderError(f"{folder} has no fold_*/checkpoint_final.pth or checkpoint_best.pth.")
        return found
    out = []
    for f in folds:
        f = str(f)
        for name in CHECKPOINT_NAMES:
            if (folder / f"fold_{f}" / name).is_file():
                out.append((f, folder / f"fold_{f}" / name))
                break
        else:
            raise ModelFolderError(f"{folder / f'fold_{f}'} holds no checkpoint_final.pth or checkpoint_best.pth.")
    return out


def _read_checkpoint(path: Path) -> dict:
    from fusionseg_kernels.models import read_nnunet_checkpoint

    try:
        ckpt = read_nnunet_checkpoint(path)
    except CheckpointError:
        raise
    except Exception as err:  # truncated zip, refused pickle global, not a checkpoint dict
        msg = " ".join(str(err).split())[:300] or type(err).__name__
        raise CheckpointError(f"{path} is not a readable nnU-Net checkpoint ({msg}).") from None
    if not isinstance(ckpt.get("network_weights"), dict):
        raise CheckpointError(f"{path} holds no network_weights dict.")
    return ckpt


def network_for(trainer_name: str | None, configuration: dict, input_channels: int, num_classes: int,
                backend: str = "auto", plans_path: Path | None = None) -> torch.nn.Module:
    """The network the trainer `trainer_name` builds for this configuration (the architecture
    rule), its patch size checked. A refusal names the plans file."""
    try:
        spec = network_spec(trainer_name, configuration)
        return build_network(spec, input_channels, num_classes, backend=backend,
                             patch_size=configuration.get("patch_size"))
    except PlansError as err:
        raise ModelFolderError(f"{plans_path or 'plans.json'}: {err}.") from None


def load_model_folder(folder: str | os.PathLike, folds: Sequence[str | int] | None = None,
                      backend: str = "auto", configuration: str | None = None) -> ModelBundle:
    """Reads a model folder: plans, dataset, the checkpoints of ``folds`` (default: every
    ``fold_<n>`` with a checkpoint) and the network with the first fold's weights loaded.

    Raises `ModelFolderError` for missing or inconsistent files and `CheckpointError` for a
    checkpoint that cannot be read or whose weights do not fit the network."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such model folder.")
    plans = _read_json(folder / "plans.json", "plans.json")
    dataset_json = _read_json(folder / "dataset.json", "dataset.json")
    pairs = find_checkpoints(folder, [str(f) for f in folds] if folds is not None else None)
    checkpoints = [(f, p, _read_checkpoint(p)) for f, p in pairs]
    first = checkpoints[0][2]
    trainer_name = first.get("trainer_name")
    init_args = first.get("init_args") if isinstance(first.get("init_args"), dict) else {}
    config_name = configuration or init_args.get("configuration") or "3d_fullres"
    configs = plans.get("configurations") or {}
    if not isinstance(configs, dict):
        raise ModelFolderError(f"{folder / 'plans.json'}: 'configurations' is a {type(configs).__name__}, "
                               f"not a JSON object.")
    if config_name not in configs:
        raise ModelFolderError(f"{folder / 'plans.json'} has no configuration {config_name!r} "
                               f"(it has {', '.join(configs) or 'none'}).")
    config = _resolve_configuration(configs, config_name, folder / "plans.json")
    for key in ("patch_size", "spacing"):
        if key not in config:
            raise ModelFolderError(f"{folder / 'plans.json'}: configuration {config_name!r} has no {key!r}.")
    if len(config["patch_size"]) != 3:
        raise ModelFolderError(f"{folder / 'plans.json'}: configuration {config_name!r} is not 3-D.")
    labels = dataset_json.get("labels")
    channels = dataset_json.get("channel_names") or dataset_json.get("modality")
    if not isinstance(labels, dict) or not labels or not isinstance(channels, dict) or not channels:
        raise ModelFolderError(f"{folder / 'dataset.json'} needs 'labels' and 'channel_names'.")
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise ModelFolderError(f"{folder / 'dataset.json'}: region-based labels are not supported.")
    num_classes = len(labels)
    input_channels = len(channels)
    if input_channels != 1:
        raise ModelFolderError(f"{folder / 'dataset.json'} declares {input_channels} input channels; "
                               f"only single-channel CT models are supported.")
    network = network_for(trainer_name, config, input_channels, num_classes, backend, folder / "plans.json")
    weights = []
    for _fold, path, ckpt in checkpoints:
        if ckpt.get("trainer_name") != trainer_name:
            raise CheckpointError(f"{path} was written by trainer {ckpt.get('trainer_name')!r}, "
                                  f"fold {checkpoints[0][0]} by {trainer_name!r}.")
        try:
            if hasattr(network, "load_released_state_dict"):
                network.load_released_state_dict(ckpt["network_weights"])
            else:
                network.load_state_dict(ckpt["network_weights"])
        except Exception as err:
            msg = " ".join(str(err).split())
            if len(msg) > 400:
                msg = msg[:400] + " ..."
            raise CheckpointError(f"{path}: the weights do not fit the {type(network).__name__} that "
                                  f"plans.json and trainer {trainer_name!r} describe ({msg}).") from None
        weights.append({k: v.detach().clone() for k, v in network.state_dict().items()})
    network.load_state_dict(weights[0])
    network.eval()
    axes = first.get("inference_allowed_mirroring_axes")
    axes = tuple(int(a) for a in axes) if axes is not None else None
    return ModelBundle(folder=folder, plans=plans, dataset_json=dataset_json, configuration_name=config_name,
                       configuration=config, network=network, fold_weights=weights,
                       folds=[f for f, _, _ in checkpoints], checkpoint_files=[p for _, p, _ in checkpoints],
                       trainer_name=trainer_name, mirroring_axes=axes, num_classes=num_classes,
                       input_channels=input_channels)


def _resolve_configuration(configs: dict, name: str, where: Path) -> dict:
    """A configuration with ``inherits_from`` applied (as nnU-Net's PlansManager does)."""
    seen = []
    config: dict = {}
    while name is not None:
        if name in seen or name not in configs:
            raise ModelFolderError(f"{where}: configuration {name!r} cannot be resolved (inherits_from).")
        if not isinstance(configs[name], dict):
            raise ModelFolderError(f"{where}: configuration {name!r} is a {type(configs[name]).__name__}, not a "
                                   f"JSON object.")
        seen.append(name)
        parent = configs[name]
        merged = copy.deepcopy(parent)
        merged.update(config)
        config = merged
        name = parent.get("inherits_from")
    config.pop("inherits_from", None)
    return config
