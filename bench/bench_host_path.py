"""Host path of a FLARE case: everything but the network, one process per case as FLARE runs it.

Each run is one ``fusionseg predict`` process on a folder holding one synthetic 512×512×Z CT
(0.8 × 0.8 × 2.5 mm, FLARE's geometry), with a model folder of the released layout whose network
is tiny (features 4-8-8-16-16, patch 96×128×128), so that the stages around the network show:

    start-up    process start to the command running (interpreter, the command line's imports)
    imports     torch and the rest of predict's imports (the first case is read meanwhile)
    set-up      device initialisation and model load
    read        what the case waited for its voxels (the read itself overlaps the imports)
    preprocess, network, postprocess, write     as `--timings` records them
    gap         wall time not in any of these (process exit included)

"host" is the wall time minus the network stage. `nnUNetv2_predict_from_modelfolder` runs on
the same model folder and case in the same run as the anchor; its host time is its wall time
minus the network time of exact mode (the same network, tiles and accumulation). Runs of the
sides are interleaved, repeated, and the machine is watched (bench.machine).

    python -m bench.bench_host_path                       # 512x512x554, fast + exact + nnU-Net, 3 repeats
    python -m bench.bench_host_path --full                # the paper's eight sizes
    python -m bench.bench_host_path --sizes 55 --repeats 1 --no-anchor
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import PAPER_SLICES, default_out, environment, write_json
from bench.machine import MachineMonitor, Timings, judge

BIN = Path(sys.executable).parent
SPACING_ZYX = (2.5, 0.8, 0.8)
TINY_FEATURES = (4, 8, 8, 16, 16)
STAGES = ("startup", "imports", "setup", "read", "preprocess", "network", "postprocess", "write", "gap")
SIDES = ("fast", "exact", "nnunet")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, help="slices Z of 512x512xZ cases (default 554)")
    p.add_argument("--full", action="store_true", help=f"the paper's sizes {', '.join(map(str, PAPER_SLICES))}")
    p.add_argument("--modes", nargs="+", choices=("fast", "exact"), default=["fast", "exact"])
    p.add_argument("--no-anchor", action="store_true", help="leave out nnUNetv2_predict")
    p.add_argument("--repeats", type=int, default=3, help="runs of fusionseg per mode and case (default 3)")
    p.add_argument("--anchor-repeats", type=int, default=1,
                   help="runs of nnUNetv2_predict per case (default 1: ~2 min each for 554 slices; its figure "
                        "is an anchor ten times away, not a close comparison)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every process (default 2)")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "fusionseg_bench_host_path",
                   help="where the cases and the model folder are kept between runs")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/local/host_path_<time>.json)")
    args = p.parse_args(argv)
    args.sizes = list(PAPER_SLICES) if args.full else (args.sizes or [554])
    return args


def model_folder(cache: Path) -> Path:
    folder = cache / "model_tiny_host"
    if (folder / "fold_0" / "checkpoint_final.pth").is_file():
        return folder
    import torch
    from fusionseg_kernels.inference import create_model_folder, released_plans
    from fusionseg_kernels.models import DualBranchUNet

    torch.manual_seed(0)
    return create_model_folder(folder, DualBranchUNet(features_per_stage=TINY_FEATURES),
                               released_plans(features_per_stage=TINY_FEATURES))


def case_folder(cache: Path, slices: int) -> Path:
    """A folder holding one deterministic synthetic case, as FLARE's input folder does."""
    from fusionseg_kernels.data.synth import synthesize_ct, write_case

    folder = cache / f"case_{slices}"
    path = folder / f"case{slices}_0000.nii.gz"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_case(synthesize_ct(size=(slices, 512, 512), spacing=SPACING_ZYX, seed=1), path)
    return folder


def _environment(threads: int, cache: Path) -> dict:
    from fusionseg_kernels.nnunet import ext_trainer_value   # nnU-Net finds this package's trainers

    empty = cache / "nnunet_unused"
    return dict(os.environ, OMP_NUM_THREADS=str(threads), nnUNet_raw=str(empty), nnUNet_preprocessed=str(empty),
                nnUNet_results=str(empty), nnUNet_extTrainer=ext_trainer_value(""), nnUNet_compile="0")


def _run(cmd: list[str], env: dict, timeout: float = 1800) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB of the process tree's largest process, epoch start)."""
    start_epoch, t0 = time.time(), time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = t0 + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            raise RuntimeError(f"{cmd[0]} did not finish within {timeout:.0f} s")
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    err = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}): {err[-1500:]}")
    return wall, usage.ru_maxrss / 1024, start_epoch


def run_fusionseg(mode: str, case: Path, model: Path, work: Path, env: dict, threads: int) -> dict:
    out, timings = work / f"out_{mode}", work / f"timings_{mode}.json"
    cmd = [str(BIN / "fusionseg"), "predict", "-i", str(case), "-o", str(out), "-m", str(model), "--device", "cpu",
           "--threads", str(threads), "--step", "1.0", "--mode", mode, "--quiet", "--timings", str(timings)]
    wall, rss, started = _run(cmd, env)
    doc = json.loads(timings.read_text())
    process, stages = doc["process"], doc["cases"][0]["timings"]
    split = {"startup": process["command_started"] - started,
             "imports": process["torch_imported"] - process["command_started"],
             "setup": process["model_loaded"] - process["torch_imported"],
             "read": stages["waited_for_read"], "preprocess": stages["preprocess"], "network": stages["network"],
             "postprocess": stages["postprocess"], "write": stages["write"]}
    split["gap"] = wall - sum(split.values())
    return {"wall_s": wall, "host_s": wall - stages["network"], "peak_rss_mb": rss, "stages_s": split,
            "read_overlapped_s": stages["read"], "device_init_s": process.get("device_init_s"),
            "model_load_s": process.get("model_load_s")}


def run_nnunet(case: Path, model: Path, work: Path, env: dict) -> dict:
    out = work / "out_nnunet"
    cmd = [str(BIN / "nnUNetv2_predict_from_modelfolder"), "-i", str(case), "-o", str(out), "-m", str(model),
           "-f", "0", "-step_size", "1.0", "-device", "cpu", "--disable_tta"]
    wall, rss, _ = _run(cmd, env)
    return {"wall_s": wall, "peak_rss_mb": rss}


def main(argv=None) -> int:
    args = parse_args(argv)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    model = model_folder(args.cache_dir)
    sides = [*args.modes] + ([] if args.no_anchor else ["nnunet"])
    env = _environment(args.threads, args.cache_dir)
    result = {"benchmark": "host_path", "environment": environment("cpu"),
              "settings": {"sizes": [[z, 512, 512] for z in args.sizes], "spacing_zyx": list(SPACING_ZYX),
                           "network_features": list(TINY_FEATURES), "patch": [96, 128, 128], "step": 1.0,
                           "threads": args.threads, "repeats": args.repeats,
                           "anchor_repeats": args.anchor_repeats, "sides": sides},
              "cases": []}
    print(f"host path: sizes {args.sizes}, sides {sides}, {args.repeats} repeats, {args.threads} threads", flush=True)
    with MachineMonitor(f"host path, {args.threads} threads") as monitor:
        for slices in args.sizes:
            case = case_folder(args.cache_dir, slices)
            runs: dict[str, list[dict]] = {side: [] for side in sides}
            with tempfile.TemporaryDirectory(prefix="host_path_", dir=args.cache_dir) as tmp:
                for repeat in range(max(args.repeats, args.anchor_repeats)):     # the sides interleaved
                    for side in sides:
                        if repeat >= (args.anchor_repeats if side == "nnunet" else args.repeats):
                            continue
                        work = Path(tmp) / side
                        work.mkdir(exist_ok=True)
                        runs[side].append(run_nnunet(case, model, work, env) if side == "nnunet" else
                                          run_fusionseg(side, case, model, work, env, args.threads))
            result["cases"].append(summarize(slices, runs))
            print_case(result["cases"][-1], flush=True)
            write_json(args.out or default_out("host_path"), result)
    # the anchor is one run ten times away: its spread is not a headline
    unstable = [f"{c['slices']} {side}" for c in result["cases"] for side, s in c["sides"].items()
                if side != "nnunet" and not s["host"]["stable"]]
    result["machine"], result["verdict"] = monitor.record, judge([monitor.record], unstable)
    out = args.out or default_out("host_path")
    write_json(out, result)
    if not result["verdict"]["quiet"]:
        print(f"UNRELIABLE: {'; '.join(result['verdict']['reasons'])}")
    print(f"wrote {out}")
    return 0


def summarize(slices: int, runs: dict[str, list[dict]]) -> dict:
    sides = {}
    exact_network = None
    if runs.get("exact"):
        exact_network = Timings([r["stages_s"]["network"] for r in runs["exact"]]).median
    for side, rs in runs.items():
        if side == "nnunet":
            host = [r["wall_s"] - exact_network for r in rs] if exact_network is not None else None
            entry = {"wall": Timings([r["wall_s"] for r in rs]).as_dict(),
                     "host": Timings(host).as_dict() if host else None,
                     "host_note": "wall minus exact mode's network time",
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)}
        else:
            entry = {"wall": Timings([r["wall_s"] for r in rs]).as_dict(),
                     "host": Timings([r["host_s"] for r in rs]).as_dict(),
                     "stages_median_s": {s: Timings([r["stages_s"][s] for r in rs]).median for s in STAGES},
                     "read_overlapped_median_s": Timings([r["read_overlapped_s"] for r in rs]).median,
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "runs": rs}
        if side == "nnunet":
            entry["runs"] = rs
        sides[side] = entry
    if "nnunet" in sides and sides["nnunet"]["host"]:
        for side in ("fast", "exact"):
            if side in sides:
                anchor = sides["nnunet"]["host"]["median_s"]
                sides[side]["host_speedup_vs_nnunet"] = anchor / sides[side]["host"]["median_s"]
    return {"slices": slices, "size_zyx": [slices, 512, 512], "sides": sides}


def print_case(case: dict, flush: bool = True) -> None:
    print(f"\n512x512x{case['slices']}:")
    print(f"  {'side':<7}" + "".join(f"{s:>12}" for s in STAGES) + f"{'host s':>10}{'spread':>8}{'wall s':>9}"
          f"{'RSS MB':>9}{'vs nnU-Net':>12}")
    for side, s in case["sides"].items():
        stages = s.get("stages_median_s") or {}
        cells = "".join(f"{stages[k]:>12.2f}" if k in stages else f"{'-':>12}" for k in STAGES)
        host = s["host"]
        spread = "-" if not host or host["spread"] is None else f"{host['spread']:.0%}"
        speed = s.get("host_speedup_vs_nnunet")
        print(f"  {side:<7}{cells}{(host['median_s'] if host else float('nan')):>10.2f}{spread:>8}"
              f"{s['wall']['median_s']:>9.2f}{s['peak_rss_mb']:>9.0f}{'' if speed is None else f'{speed:.1f}x':>12}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
