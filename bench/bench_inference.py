"""End-to-end inference benchmark: `fusionseg predict` on synthetic CT cases.

For each case size, mode (fast / exact), InceptionDWConv3d backend (reference / fused) and
allocator setting, one fresh worker process segments the case with the released network (random
weights, released plans) and reports its stage times (read, preprocess, network, postprocess,
write), the share of time spent outside the network, and memory: the process's peak RSS on the
CPU, or on a GPU the whole device's used memory through NVML (sampled every 0.1 s, as FLARE
measures it) and torch's peak reserved memory.

    python -m bench.bench_inference --device cpu --threads 2                      # small + mid cases
    python -m bench.bench_inference --device cpu --sizes 200 --modes fast --backends cpu
    python -m bench.bench_inference --device cuda                                 # 512x512x{55..554}

Results: --out FILE (default bench/results/local/inference_<device>_<time>.json), rewritten
after every run so an interrupted benchmark keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


from bench.harness import KEEP_FREED_MEMORY as KEEP
from bench.harness import PAPER_SLICES

CPU_SIZES = ("64x256x256", "200")   # small, mid


def parse_size(text: str) -> tuple[int, int, int]:
    """"200" -> (200, 512, 512); "64x256x256" -> (64, 256, 256) (z, y, x)."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 1:
        return (parts[0], 512, 512)
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"size {text!r}: give Z or ZxYxX")
    return tuple(parts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--sizes", nargs="+", help="Z (512x512xZ) or ZxYxX per case; default: CPU "
                   f"{' '.join(CPU_SIZES)}, GPU the paper's 512x512x{{{','.join(map(str, PAPER_SLICES))}}}")
    p.add_argument("--spacing", nargs=3, type=float, default=(2.5, 0.8, 0.8), metavar=("Z", "Y", "X"),
                   help="voxel spacing of the synthetic cases in mm (default 2.5 0.8 0.8)")
    p.add_argument("--modes", nargs="+", choices=("fast", "exact"), default=["fast", "exact"])
    p.add_argument("--backends", nargs="+", help="InceptionDWConv3d backends (default: CPU reference cpu; "
                   "GPU reference cuda triton)")
    p.add_argument("--allocator", choices=("keep", "default", "both"), default="keep",
                   help="glibc keeps freed memory (keep, the predict default), glibc defaults, or both")
    p.add_argument("--threads", type=int, help="torch threads of the workers (default: torch's choice)")
    p.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16", help="fast mode on a GPU")
    p.add_argument("--step", type=float, default=0.5, help="tile step (default 0.5)")
    p.add_argument("--network", choices=("released", "tiny"), default="released",
                   help="released: the 8.2 M-parameter network and the (96,128,128) patch; tiny: a "
                        "reduced network and patch for a quick dry run")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "fusionseg_bench_inference",
                   help="where the synthetic cases and the model folder are kept between runs")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per worker run (default 3600)")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/local/inference_<device>_<time>.json)")
    p.add_argument("--agreement", type=int, metavar="N", default=0,
                   help="instead of timing: Dice between the fast and exact masks on N synthetic cases "
                        "(--sizes, --spacing), with a stand-in network that segments bone (HU > 150)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


# --------------------------------------------------------------------------------- set-up
def model_folder(cache: Path, network: str) -> Path:
    from fusionseg_kernels.inference import create_model_folder, released_plans
    from fusionseg_kernels.models import DualBranchUNet

    folder = cache / f"model_{network}"
    if (folder / "fold_0" / "checkpoint_final.pth").is_file():
        return folder
    import torch

    torch.manual_seed(0)
    if network == "released":
        net, plans = DualBranchUNet(), released_plans()
    else:
        feats, strides = (8, 16, 16, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2))
        net = DualBranchUNet(features_per_stage=feats, strides=strides)
        plans = released_plans(patch_size=(32, 64, 64), features_per_stage=feats, strides=strides)
    return create_model_folder(folder, net, plans)


def case_file(cache: Path, size, spacing) -> Path:
    from fusionseg_kernels.data.synth import synthesize_ct, write_case

    name = "case_{}x{}x{}_{}".format(*size, "_".join(f"{s:g}" for s in spacing))
    path = cache / "cases" / f"{name}_0000.nii.gz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_case(synthesize_ct(size=size, spacing=spacing, seed=1), path)
    return path


# --------------------------------------------------------------------------------- worker
class _Sampler:
    """Peak RSS of this process (CPU) or the whole GPU's used memory via NVML, every 0.1 s."""

    def __init__(self, device: str):
        self.device, self.peak, self.samples, self.stop = device, 0, 0, threading.Event()
        self.nvml = None
        if device == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                first_visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0
                self.nvml = pynvml.nvmlDeviceGetHandleByIndex(int(first_visible))
            except Exception:  # noqa: BLE001 - reported as missing
                self.nvml = None

    def read(self) -> int:
        if self.nvml is not None:
            import pynvml

            info = pynvml.nvmlDeviceGetMemoryInfo(self.nvml)
            return int(info.total - info.free)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.read())
            self.samples += 1
            time.sleep(0.1)

    def __enter__(self):
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.read())


def worker(spec: dict) -> dict:
    from fusionseg_kernels.inference import keep_freed_memory

    allocator = keep_freed_memory(spec["allocator"] == "keep")
    import resource

    import torch

    from fusionseg_kernels.inference import PredictOptions, Predictor

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    opts = PredictOptions(device=spec["device"], backend=spec["backend"], mode=spec["mode"], quiet=True,
                          step=spec["step"], precision=spec["precision"])
    t0 = time.perf_counter()
    with _Sampler(spec["device"]) as sampler:
        predictor = Predictor(spec["model"], opts)
        load_s = time.perf_counter() - t0
        out_dir = Path(spec["out_dir"])
        res = predictor.predict_file(spec["case"], out_dir / "mask.nii.gz")
    wall = time.perf_counter() - t0
    t = res.timings
    out = {"load_model_s": load_s, "wall_s": wall, "timings": t,
           "outside_network_fraction": 1.0 - t["network"] / t["total"],
           "network_shape": res.network_shape, "tiles": res.tiles, "results_device": res.results_device,
           "allocator": allocator, "threads": torch.get_num_threads(),
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if spec["device"] == "cuda":
        out["nvml_peak_used_bytes"] = sampler.peak if sampler.nvml is not None else None
        out["torch_max_reserved_bytes"] = torch.cuda.max_memory_reserved()
        out["torch_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    else:
        out["sampled_peak_rss_bytes"] = sampler.peak
    return out


# --------------------------------------------------------------------------------- agreement
def agreement(args, sizes, cache: Path, out_path: Path) -> int:
    from bench import harness as common
    import numpy as np
    import SimpleITK as sitk
    import torch

    from fusionseg_kernels.data.synth import synthesize_ct, write_case
    from fusionseg_kernels.inference import PredictOptions, Predictor, keep_freed_memory, load_model_folder
    from fusionseg_kernels.inference.demo import threshold_network

    keep_freed_memory(args.allocator != "default")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = model_folder(cache, "tiny")   # only its plans are used: the network is replaced
    doc = {"benchmark": "inference_agreement", "environment": common.environment(args.device),
           "settings": {"spacing": list(args.spacing), "network": "threshold (HU > 150, 3x3x3 mean)",
                        "step": args.step, "device": args.device}, "cases": []}
    print(f"results -> {out_path}")
    for size in sizes:
        for seed in range(args.agreement):
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                src = Path(tmp) / "agree_0000.nii.gz"
                write_case(synthesize_ct(size=size, spacing=tuple(args.spacing), seed=100 + seed), src)
                masks = {}
                for mode in ("exact", "fast"):
                    bundle = load_model_folder(model)
                    bundle.network, bundle.fold_weights = threshold_network(), [{}]
                    Predictor(bundle, PredictOptions(device=args.device, mode=mode, quiet=True,
                                                     step=args.step)).predict_file(src, Path(tmp) / f"{mode}.nii.gz")
                    masks[mode] = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(tmp) / f"{mode}.nii.gz"))) > 0
            a, b = masks["fast"], masks["exact"]
            d = 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)
            row = {"size_zyx": list(size), "seed": 100 + seed, "dice_fast_vs_exact": d,
                   "exact_voxels": int(b.sum()), "fast_voxels": int(a.sum()),
                   "differing_voxels": int((a ^ b).sum())}
            doc["cases"].append(row)
            common.write_json(out_path, doc)
            print(f"{'x'.join(map(str, size)):>14} seed {100 + seed}: Dice {d:.4f} "
                  f"({row['differing_voxels']} of {row['exact_voxels']} exact-mask voxels differ)", flush=True)
    dices = [c["dice_fast_vs_exact"] for c in doc["cases"]]
    doc["mean_dice"] = float(np.mean(dices)) if dices else None
    common.write_json(out_path, doc)
    print(f"mean Dice fast vs exact: {doc['mean_dice']:.4f} over {len(dices)} case(s)")
    return 0


# --------------------------------------------------------------------------------- driver
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print("RESULT " + json.dumps(worker(spec)), flush=True)
        return 0

    from bench import harness as common

    sizes = [parse_size(s) for s in (args.sizes or (CPU_SIZES if args.device == "cpu" else map(str, PAPER_SLICES)))]
    backends = args.backends or (["reference", "cpu"] if args.device == "cpu" else ["reference", "cuda", "triton"])
    allocators = ["keep", "default"] if args.allocator == "both" else [args.allocator]
    if args.device == "cuda":
        allocators = allocators[:1]
    cache = args.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    if args.agreement:
        return agreement(args, sizes, cache, args.out or common.default_out("inference_agreement"))
    out_path = args.out or common.default_out(f"inference_{args.device}")
    model = model_folder(cache, args.network)
    doc = {"benchmark": "inference", "environment": common.environment(args.device),
           "settings": {"device": args.device, "spacing": list(args.spacing), "network": args.network,
                        "step": args.step, "precision": args.precision, "threads": args.threads},
           "runs": []}
    print(f"results -> {out_path}")
    header = (f"{'case':>14} {'mode':>5} {'backend':>9} {'alloc':>7} {'read':>6} {'prep':>6} {'net':>7} "
              f"{'post':>6} {'write':>6} {'total':>7} {'outside':>7} {'mem GB':>7}")
    print(header)
    for size in sizes:
        case = case_file(cache, size, tuple(args.spacing))
        for mode in args.modes:
            for backend in backends:
                for allocator in allocators:
                    spec = {"device": args.device, "backend": backend, "mode": mode, "allocator": allocator,
                            "threads": args.threads, "step": args.step, "precision": args.precision,
                            "model": str(model), "case": str(case)}
                    with tempfile.TemporaryDirectory(dir=cache) as tmp:
                        spec["out_dir"] = tmp
                        env = {k: v for k, v in os.environ.items() if k not in KEEP}
                        run = {"size_zyx": list(size), **{k: spec[k] for k in ("mode", "backend", "allocator")}}
                        try:
                            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                                                  capture_output=True, text=True, env=env, timeout=args.timeout)
                            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                            if proc.returncode != 0 or not line:
                                run["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:500]
                            else:
                                run.update(json.loads(line[-1][7:]))
                        except subprocess.TimeoutExpired:
                            run["error"] = f"timed out after {args.timeout} s"
                    doc["runs"].append(run)
                    common.write_json(out_path, doc)
                    label = "x".join(map(str, size))
                    if "error" in run:
                        print(f"{label:>14} {mode:>5} {backend:>9} {allocator:>7}  error: {run['error']}")
                        continue
                    t = run["timings"]
                    mem = run.get("nvml_peak_used_bytes") or run.get("sampled_peak_rss_bytes") or 0
                    print(f"{label:>14} {mode:>5} {backend:>9} {allocator:>7} {t['read']:6.2f} {t['preprocess']:6.2f} "
                          f"{t['network']:7.2f} {t['postprocess']:6.2f} {t['write']:6.2f} {t['total']:7.2f} "
                          f"{100 * run['outside_network_fraction']:6.1f}% {mem / 1e9:7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
