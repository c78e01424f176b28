"""A tiny demo set-up for ``fusionseg predict``: a model folder and synthetic CT files.

    fusionseg demo FOLDER [--cases N] [--size Z Y X]   (or python -m fusionseg_kernels.inference.demo ...)

writes FOLDER/model (an nnU-Net model folder: the release's plans with a reduced network and
patch, random weights, trainer ``nnUNetTrainernew``) and FOLDER/images/<case>_0000.nii.gz.
The masks such a model gives are meaningless; the set-up is for trying the command and its
options in seconds on a CPU.
"""
from __future__ import annotations

from pathlib import Path

DEMO_FEATURES = (8, 16, 16, 32)
DEMO_STRIDES = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2))
DEMO_PATCH = (16, 32, 32)


def threshold_network(hu: float = 150.0, mean: float = -43.0046, std: float = 262.2776, sharpness: float = 20.0):
    """A stand-in for a trained network whose mask is known: the voxels whose 3x3x3 mean intensity
    exceeds ``hu`` (bone, for the default 150 HU). Used to measure how far the fast mode's mask is
    from the exact mode's. A torch module taking CT-normalized input ((HU - mean) / std) and giving 2-class logits
    (background 0, foreground ``sharpness * (smoothed - threshold)``)."""
    import torch

    class _Threshold(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.t = (hu - mean) / std

        def forward(self, x):
            s = torch.nn.functional.avg_pool3d(x, 3, 1, 1, count_include_pad=False)
            return torch.cat([torch.zeros_like(s), sharpness * (s - self.t)], 1)

    return _Threshold().eval()


def make_demo(folder: str | Path, cases: int = 2, size=(16, 48, 48), spacing=(4.0, 2.5, 2.5),
              seed: int = 0) -> tuple[Path, Path]:
    """(model folder, image folder) under ``folder``."""
    import torch

    from fusionseg_kernels.data.synth import synthesize_ct, write_case
    from fusionseg_kernels.models import DualBranchUNet

    from .model_folder import create_model_folder, released_plans

    folder = Path(folder)
    torch.manual_seed(seed)
    net = DualBranchUNet(features_per_stage=DEMO_FEATURES, strides=DEMO_STRIDES)
    model = create_model_folder(folder / "model", net, released_plans(patch_size=DEMO_PATCH,
                                                                    features_per_stage=DEMO_FEATURES,
                                                                    strides=DEMO_STRIDES))
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        case = synthesize_ct(size=tuple(size), spacing=tuple(spacing), seed=seed + i)
        write_case(case, images / f"demo_{i:04d}_0000.nii.gz")
    return model, images


def main(argv=None) -> int:
    """``python -m fusionseg_kernels.inference.demo``: the same as ``fusionseg demo``."""
    from fusionseg_kernels.cli import main as cli_main

    return cli_main(["demo", *(argv if argv is not None else __import__("sys").argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
