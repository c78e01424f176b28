"""`nnUNetv2_predict` against `fusionseg predict` (exact and fast mode), same model folder, same
cases, same machine, same run: end-to-end wall time and peak memory of each whole command (start-up,
model loading and file I/O included, as FLARE times a container), and mask agreement.

    python -m bench.bench_vs_nnunet                       # a random-weight model folder and synthetic cases
    python -m bench.bench_vs_nnunet -m MODEL -i IMAGES    # your model folder and images

nnU-Net finds the model's trainer (nnUNetTrainernew) through `fusionseg nnunet-env`, set here.
Both sides run with TTA off, the same folds, the same thread count. Memory is the whole device's
(NVML) on a GPU, the process tree's RSS on the CPU. Results: JSON under bench/results/local/.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


from bench.harness import default_out, environment, write_json

BIN = Path(sys.executable).parent


def _masks(folder: Path) -> dict:
    import SimpleITK as sitk

    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def _agreement(a: dict, b: dict) -> dict:
    import numpy as np

    differ = sum(int(np.count_nonzero(a[k] != b[k])) for k in a if k in b)
    total = sum(int(a[k].size) for k in a if k in b)
    dice = []
    for k in a:
        if k in b:
            inter = int(np.count_nonzero((a[k] == 1) & (b[k] == 1)))
            size = int(np.count_nonzero(a[k] == 1) + np.count_nonzero(b[k] == 1))
            dice.append(1.0 if size == 0 else 2 * inter / size)
    return {"cases_compared": len(dice), "voxels_differ": differ, "voxels": total,
            "fraction_differ": differ / total if total else None,
            "mean_dice": sum(dice) / len(dice) if dice else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("-m", "--model", type=Path, help="nnU-Net model folder (default: a random-weight demo model)")
    p.add_argument("-i", "--images", type=Path, help="folder of <case>_0000.nii.gz images (default: synthetic)")
    p.add_argument("--cases", type=int, default=3, help="synthetic cases when -i is not given")
    p.add_argument("--size", type=int, nargs=3, default=(48, 160, 160), metavar=("Z", "Y", "X"))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="result JSON (default: bench/results/local/)")
    args = p.parse_args(argv)

    from fusionseg_kernels.nnunet.env import ext_trainer_value
    from fusionseg_kernels.profiling import profile_command

    work = Path(tempfile.mkdtemp(prefix="fusionseg-vs-nnunet-"))
    if args.model is None or args.images is None:
        from fusionseg_kernels.inference.demo import make_demo

        model, images = make_demo(work / "demo", cases=args.cases, size=tuple(args.size))
    model, images = args.model or model, args.images or images
    env = dict(os.environ)
    env["nnUNet_extTrainer"] = ext_trainer_value(env.get("nnUNet_extTrainer"))
    env.update({"OMP_NUM_THREADS": str(args.threads), "FUSIONSEG_NUM_THREADS": str(args.threads)})
    folds = sorted(d.name.split("_", 1)[1] for d in model.glob("fold_*") if d.is_dir())
    runs = {
        "nnUNetv2_predict": [BIN / "nnUNetv2_predict_from_modelfolder", "-i", images, "-o", work / "nnunet",
                             "-m", model, "-f", *folds, "--disable_tta", "-device", args.device,
                             "-npp", "1", "-nps", "1", "--disable_progress_bar"],
        "fusionseg exact": [BIN / "fusionseg", "predict", "-i", images, "-o", work / "exact", "-m", model,
                            "-f", *folds, "--mode", "exact", "--device", args.device, "--threads", str(args.threads),
                            "--quiet"],
        "fusionseg fast": [BIN / "fusionseg", "predict", "-i", images, "-o", work / "fast", "-m", model,
                           "-f", *folds, "--mode", "fast", "--device", args.device, "--threads", str(args.threads),
                           "--quiet"],
    }
    result = {"meta": environment(args.device), "model": str(model), "images": str(images),
              "cases": len(list(images.glob("*_0000.nii.gz"))), "runs": {}}
    for name, command in runs.items():
        prof = profile_command(command, env=env)
        result["runs"][name] = {k: prof[k] for k in ("time_s", "max_mem_mb", "auc_mb_s", "exit_status", "device")}
        print(f"{name:18s} {prof['time_s']:8.2f} s  peak {prof['max_mem_mb']:8.0f} MB  exit {prof['exit_status']}",
              flush=True)
    theirs = _masks(work / "nnunet")
    result["agreement"] = {"exact vs nnUNetv2_predict": _agreement(_masks(work / "exact"), theirs),
                           "fast vs nnUNetv2_predict": _agreement(_masks(work / "fast"), theirs)}
    base = result["runs"]["nnUNetv2_predict"]["time_s"]
    for name in ("fusionseg exact", "fusionseg fast"):
        result["runs"][name]["speedup_vs_nnunet"] = base / result["runs"][name]["time_s"]
        print(f"{name}: {base / result['runs'][name]['time_s']:.2f}x the speed of nnUNetv2_predict; "
              f"masks vs nnU-Net: {result['agreement'][name.split()[1] + ' vs nnUNetv2_predict']}")
    out = args.out or default_out(f"vs_nnunet_{args.device}")
    write_json(out, result)
    print(f"wrote {out}")
    return 0 if all(r["exit_status"] == 0 for r in result["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
