"""Shared helpers of the predict tests (no tests here): a tiny dual-branch model folder and
synthetic CT files with chosen geometry."""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from fusionseg_kernels.inference import create_model_folder, released_plans
from fusionseg_kernels.models import DualBranchUNet

TINY_FEATURES = (8, 16, 16, 32)
TINY_STRIDES = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2))
TINY_PATCH = (16, 32, 32)


def tiny_network(seed: int = 0, features=TINY_FEATURES) -> DualBranchUNet:
    torch.manual_seed(seed)
    net = DualBranchUNet(features_per_stage=features, strides=TINY_STRIDES).eval()
    # random init gives near-constant logits; larger weights on the head give a varied mask
    with torch.no_grad():
        head = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)][-1]
        head.weight.mul_(8.0)
    return net


def tiny_plans(patch=TINY_PATCH, features=TINY_FEATURES):
    return released_plans(patch_size=patch, features_per_stage=features, strides=TINY_STRIDES)


def make_model_folder(folder: Path, n_folds: int = 1, seed: int = 0, **kw) -> Path:
    nets = [tiny_network(seed + i) for i in range(n_folds)]
    return create_model_folder(folder, nets, tiny_plans(), **kw)


def rotation_direction(ax: float, ay: float, az: float) -> tuple[float, ...]:
    """A row-major 3x3 rotation (radians about x, y, z) as SimpleITK's direction tuple."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return tuple(float(v) for v in (rz @ ry @ rx).ravel())


def ct_volume(size_zyx, seed: int = 0) -> np.ndarray:
    """A small int16 CT-like volume: the synthetic phantom when available, else smooth noise."""
    try:
        from fusionseg_kernels.data.synth import synthesize_ct

        return synthesize_ct(size=tuple(size_zyx), spacing=(3.0, 2.0, 2.0), seed=seed).image
    except ImportError:
        rng = np.random.default_rng(seed)
        return (rng.normal(0, 300, size_zyx)).clip(-1024, 3071).astype(np.int16)


def write_volume(path: Path, array: np.ndarray, spacing_xyz=(2.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0),
                 direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(float(d) for d in direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)
    return path


def leftovers(folder: Path) -> list[str]:
    """Hidden or partial files a run may have left behind."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(".") or "partial" in p.name)


@contextlib.contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
