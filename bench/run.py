"""`make bench`: every benchmark that runs on this machine, then one report.

Writes reports/<UTC date and time>-<device>/ (or --out DIR) with:
  report.md        the report: op benchmark, static GPU report, network comparison, complexity,
                   FLARE efficiency profile of `fusionseg predict`
  results.json     everything the report shows, with the environment it was measured in
  plots/*.png      speedup per layer shape, bandwidth against the roofline, network comparison,
                   FLARE memory-time curves
  raw/, logs/      each job's own result file and output
and prints the report's path last. Sections:

  op          CPU: bench/bench_cpu_op.py (cpu, reference, torch.compile(reference));
              GPU: bench/bench_gpu_kernels.py (every built backend, reference, torch.compile)
  gpu_static  bench/gpu_static.py --json (static GPU report; predictions, no GPU needed)
  network     bench/bench_network.py (inference forward and training step: reference, the fused op
              only, op + fused norm, and channels_last)
  complexity  fusionseg complexity --json
  flare       fusionseg synth + fusionseg profile --per-case -- fusionseg predict, on synthetic
              cases, once per backend (reference and the fused ones)
  host_path   bench/bench_host_path.py: everything but the network of a 512x512x554 case, one
              fusionseg predict process per run (fast and exact mode); --full: nnUNetv2_predict as the
              anchor and the paper's eight sizes

Default: the CPU op benchmark at 0.5 s per measurement, the static report for the three
calls with x >= 32 MB in bf16, two small FLARE cases; on a GPU the quick kernel sweep. --full: full timing
budgets, the full GPU sweep (all shapes with torch.compile), the full static report and the
paper's eight case sizes (512x512x{55,100,150,215,334,448,499,554}) in the FLARE profile (also
--flare-sizes paper).
Results go to an untracked folder; committed reference results in bench/results/ are only
written when a job is pointed there explicitly.

    python -m bench.run [--out DIR] [--full] [--only SECTION ...] [--skip SECTION ...]
                        [--flare-sizes small|paper] [--flare-cases N] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.machine import MachineMonitor, judge, wait_for_quiet
from bench.harness import (KEEP_FREED_MEMORY, PAPER_SLICES, PAPER_SPACING, REPORTS_DIR, ROOT, STABLE_THREADS,
                           device_slug, environment, utc_now, write_json)

SECTIONS = ("op", "gpu_static", "network", "complexity", "flare", "host_path")
SMALL_SIZE, SMALL_SPACING = (40, 160, 160), (5.0, 1.6, 1.6)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", type=Path, default=None, help="report folder (default reports/<UTC time>-<device>/)")
    p.add_argument("--full", action="store_true",
                   help="full GPU sweep, full static report, the paper's eight case sizes")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=None, help="run only these sections")
    p.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], help="leave these sections out")
    p.add_argument("--flare-sizes", choices=("small", "paper"), default=None,
                   help="small: --flare-cases cases of 40x160x160 at 5x1.6x1.6 mm (default); "
                        "paper: 512x512x{55..554} at 2.5x0.8x0.8 mm (default with --full)")
    p.add_argument("--flare-cases", type=int, default=2, help="number of small FLARE cases (default 2)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the CPU jobs (default 2)")
    p.add_argument("--gpu-static-json", type=Path, default=None,
                   help="use this stored bench/gpu_static.py --json report instead of running it")
    p.add_argument("--gpu-static-limit", type=float, default=240,
                   help="seconds bench/gpu_static.py may take (default 240; it compiles Triton kernels for "
                        "two architectures the first time, later runs reuse Triton's cache); 0: no limit")
    p.add_argument("--smoke", action="store_true", help="every section on tiny sizes (a check of the pipeline)")
    p.add_argument("--wait-quiet", type=float, default=180, metavar="S",
                   help="wait up to S seconds for a quiet machine before timing (default 180; 0: do not wait)")
    args = p.parse_args(argv)
    args.sections = [s for s in (args.only or SECTIONS) if s not in args.skip]
    args.flare_sizes = args.flare_sizes or ("paper" if args.full else "small")
    if args.flare_cases < 1:
        p.error("--flare-cases must be at least 1")
    return args


class Runner:
    """Runs one job at a time, its output shown and kept in logs/<name>.log; records status and time."""

    def __init__(self, out: Path, gpu: bool = False):
        self.out, self.gpu = out, gpu
        self.status: dict[str, dict] = {}
        self.timed_out: set[str] = set()
        #: the machine's state during each timed job (MachineMonitor records)
        self.machine: dict[str, dict] = {}

    def _kill(self, proc, name, timeout):
        self.timed_out.add(name)
        print(f"== {name}: limit of {timeout:.0f} s reached, stopping it", flush=True)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def run(self, name: str, cmd: list[str], env: dict | None = None, stdout_file: Path | None = None,
            timeout: float | None = None) -> bool:
        """Runs cmd in its own process group; past `timeout` seconds the group is killed and the job
        counts as failed (what it wrote so far is kept)."""
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        shown = shlex.join(str(c) for c in cmd)
        print(f"== {name}: {shown}", flush=True)
        t0 = time.perf_counter()
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        with open(log, "w") as lf:
            lf.write(f"$ {shown}\n")
            lf.flush()
            of = open(stdout_file, "w") if stdout_file is not None else None  # stdout is the result
            proc = subprocess.Popen(cmd, stdout=of or subprocess.PIPE, stderr=lf if of else subprocess.STDOUT,
                                    env=full_env, cwd=ROOT, text=True, bufsize=1, start_new_session=True)
            timer = threading.Timer(timeout, self._kill, (proc, name, timeout)) if timeout else None
            if timer:
                timer.start()
            try:
                with MachineMonitor(name, gpu=self.gpu) as monitor:
                    if of is None:
                        for line in proc.stdout:
                            sys.stdout.write(line)
                            lf.write(line)
                    rc = proc.wait()
                self.machine[name] = monitor.record
            finally:
                if timer:
                    timer.cancel()
                if of is not None:
                    of.close()
        seconds = time.perf_counter() - t0
        entry = self.status.setdefault(name, {"command": shown, "seconds": 0.0, "ok": True, "log": str(log)})
        entry["seconds"] += seconds
        entry["ok"] = entry["ok"] and rc == 0
        if name in self.timed_out:
            entry["error"] = f"stopped after its limit of {timeout:.0f} s; see {log}"
        elif rc != 0:
            entry["error"] = f"exit status {rc}; see {log}"
            print(f"== {name}: FAILED (exit status {rc}, {seconds:.0f} s; log {log})", flush=True)
        else:
            print(f"== {name}: done in {seconds:.0f} s", flush=True)
        return rc == 0

    def skip(self, name: str, why: str) -> None:
        print(f"== {name}: skipped ({why})", flush=True)
        self.status[name] = {"ok": None, "skipped": why, "seconds": 0.0}


def load(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------- sections

def section_op(r: Runner, args, device: str, py: str) -> dict | None:
    raw = r.out / "raw"
    if device == "cpu":
        out = raw / "cpu_op.json"
        cmd = [py, "-m", "bench.bench_cpu_op", "--threads", str(args.threads), "--out", str(out)]
        if args.smoke:
            cmd += ["--smoke"]
        elif not args.full:
            cmd += ["--budget", "0.5"]
        r.run("op", cmd, env={**KEEP_FREED_MEMORY, **STABLE_THREADS})
        data = load(out)
        # one thread beside the two: one-thread figures do not depend on waking a second thread
        out1 = raw / "cpu_op_1thread.json"
        cmd1 = [py, "-m", "bench.bench_cpu_op", "--threads", "1", "--providers", "reference", "cpu",
                "--out", str(out1)] + (["--smoke"] if args.smoke else [] if args.full else ["--budget", "0.5"])
        if args.threads != 1:
            r.run("op_1thread", cmd1, env={**KEEP_FREED_MEMORY, **STABLE_THREADS})
        return {"kind": "cpu", "data": data, "one_thread": load(out1)} if data else None
    out = raw / "gpu_kernels.json"
    cmd = [py, "-m", "bench.bench_gpu_kernels", "--out", str(out)]
    if args.smoke:
        cmd += ["--smoke", "--device", "cuda"]
    elif not args.full:
        cmd += ["--quick", "--compile-shapes", "2"]
    r.run("op", cmd)
    data = load(out)
    return {"kind": "gpu", "data": data} if data else None


def section_gpu_static(r: Runner, args, device: str, py: str) -> dict | None:
    if args.gpu_static_json:
        data = load(args.gpu_static_json)
        r.status["gpu_static"] = {"ok": data is not None, "seconds": 0.0, "source": str(args.gpu_static_json)}
        return data
    out = r.out / "raw" / "gpu_static.json"
    cmd = [py, "-m", "bench.gpu_static", "--json", str(out), "--quiet"]
    if not args.full:  # the calls with x >= 32 MB in bf16 (the GPU training dtype); --full: every call and dtype
        cmd += ["--subset", "--dtypes", "bf16"]
    r.run("gpu_static", cmd, timeout=None if args.full or not args.gpu_static_limit else args.gpu_static_limit)
    return load(out)


def section_network(r: Runner, args, device: str, py: str) -> dict | None:
    out = r.out / "raw" / "network.json"
    cmd = [py, "-m", "bench.bench_network", "--device", device, "--out", str(out)]
    if args.smoke:
        cmd += ["--smoke", "--threads", str(args.threads)]
    elif device == "cpu":
        # the four variants (reference, cpu-op, cpu, cpu-cl) with 5 repeats after 1 warm-up, so that
        # make bench stays within 10 minutes on a quiet 2-core machine
        cmd += ["--quick", "--repeats", "5", "--warmup", "1", "--threads", str(args.threads), "--keep-freed-memory"]
    r.run("network", cmd, env=STABLE_THREADS if device == "cpu" else None)
    return load(out)


def section_complexity(r: Runner, args, device: str, py: str) -> dict | None:
    out = r.out / "raw" / "complexity.json"
    cmd = [py, "-m", "fusionseg_kernels.cli", "complexity", "--json"]
    if args.smoke:
        cmd += ["--networks", "dual"]
    r.run("complexity", cmd, stdout_file=out)
    return load(out)


def write_model_folder(folder: Path, smoke: bool) -> None:
    """The released network (DualBranchUNet) with random weights as an nnU-Net model folder, with
    the release's plans (smoke: a tiny network and patch)."""
    import torch
    from fusionseg_kernels.inference import create_model_folder, released_plans
    from fusionseg_kernels.models import DualBranchUNet

    torch.manual_seed(0)
    if smoke:
        features, strides, patch = (8, 16, 16, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2)), (16, 32, 32)
        net = DualBranchUNet(features_per_stage=features, strides=strides).eval()
        plans = released_plans(patch_size=patch, features_per_stage=features, strides=strides)
    else:
        net, plans = DualBranchUNet().eval(), released_plans()
    create_model_folder(folder, net, plans)


def section_flare(r: Runner, args, device: str, py: str) -> dict | None:
    work = r.out / "flare"
    cases = work / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    cli = [py, "-m", "fusionseg_kernels.cli"]
    if args.smoke:
        sizes = [((12, 40, 40), SMALL_SPACING)]
    elif args.flare_sizes == "paper":
        sizes = [((z, 512, 512), PAPER_SPACING) for z in PAPER_SLICES]
    else:
        sizes = [(SMALL_SIZE, SMALL_SPACING)] * args.flare_cases
    t0 = time.perf_counter()
    for i, (size, spacing) in enumerate(sizes):
        folder = work / "synth" / f"{i:02d}"
        if not r.run("flare_synth", [*cli, "synth", "-o", str(folder), "-n", "1", "--size", *map(str, size),
                                     "--spacing", *map(str, spacing), "--seed", str(i)]):
            return None
        for image in sorted((folder / "imagesTr").glob("*_0000.nii.gz")):
            target = cases / image.name
            if not target.exists():
                if os.stat(image).st_dev == os.stat(cases).st_dev:
                    os.link(image, target)
                else:
                    shutil.copy2(image, target)
    model = work / "model"
    print(f"== flare_model: writing a random-weight model folder to {model}", flush=True)
    write_model_folder(model, args.smoke)
    r.status.setdefault("flare_synth", {"ok": True, "seconds": 0.0})["seconds_with_model"] = time.perf_counter() - t0
    from fusionseg_kernels.ops.inception_dwconv3d.dispatch import available_backends

    backends = available_backends(device)
    results = {}
    for backend in backends:
        out_json = r.out / "raw" / f"flare_{backend}.json"
        predict = [*cli, "predict", "-i", "{input}", "-o", "{output}", "-m", str(model), "--device", device,
                   "--backend", backend, "--quiet"]
        if device == "cpu":
            predict += ["--threads", str(args.threads)]
        r.run(f"flare_{backend}", [*cli, "profile", "--per-case", "-i", str(cases), "-o",
                                   str(work / f"out_{backend}"), "--json", str(out_json), "--", *predict])
        data = load(out_json)
        if data:
            results[backend] = data
    return {"sizes": [{"size_zyx": list(s), "spacing_zyx": list(sp)} for s, sp in sizes],
            "device": device, "backends": results} if results else None


def section_host_path(r: Runner, args, device: str, py: str) -> dict | None:
    out_json = r.out / "raw" / "host_path.json"
    cmd = [py, "-m", "bench.bench_host_path", "--threads", str(args.threads), "--out", str(out_json)]
    if args.smoke:
        cmd += ["--sizes", "55", "--repeats", "1", "--no-anchor"]
    elif args.full:
        cmd += ["--full"]
    else:   # nnUNetv2_predict's ~2 minutes on the 554-slice case only with --full (BENCHMARKS.md has its figure)
        cmd += ["--no-anchor"]
    r.run("host_path", cmd)   # as a user runs it: no OpenMP spinning beside the reading and writing threads
    return load(out_json)


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    device = "cuda" if cuda_available() else "cpu"
    env = environment(device)
    out = args.out or REPORTS_DIR / f"{utc_now():%Y-%m-%dT%H%MZ}-{device_slug(env)}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"bench: {env['device']}, commit {env['commit'][:12]}; report folder {out}", flush=True)
    runner = Runner(out, gpu=device == "cuda")
    waited = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else {"quiet": None, "waited_s": 0.0}
    py = sys.executable
    sections = {}
    jobs = {"op": section_op, "gpu_static": section_gpu_static, "network": section_network,
            "complexity": section_complexity, "flare": section_flare, "host_path": section_host_path}
    for name in args.sections:
        try:
            sections[name] = jobs[name](runner, args, device, py)
        except Exception as err:  # noqa: BLE001 - one broken section must not lose the others
            runner.status[name] = {"ok": False, "error": f"{type(err).__name__}: {err}", "seconds": 0.0}
            print(f"== {name}: FAILED ({type(err).__name__}: {err})", flush=True)
            sections[name] = None
    results = {"schema": "fusionseg-bench/1", "environment": env, "device_kind": device,
               "options": {"full": args.full, "smoke": args.smoke, "flare_sizes": args.flare_sizes,
                           "threads": args.threads, "sections": args.sections},
               "total_seconds": time.perf_counter() - started, "status": runner.status, "sections": sections}
    results["machine"] = {"wait_for_quiet": waited, "jobs": runner.machine}
    results["verdict"] = run_verdict(runner.machine, sections)
    write_json(out / "results.json", results)
    from bench import report

    path = report.write_report(results, out)
    failed = [n for n, s in runner.status.items() if s.get("ok") is False]
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
    print(f"bench: {time.perf_counter() - started:.0f} s in all")
    print(path)
    if not results["verdict"]["quiet"]:  # the last line, so that nobody reads the figures without it
        print(f"bench: UNRELIABLE: {'; '.join(results['verdict']['reasons'])}")
    return 1 if failed else 0


#: the jobs whose figures are timings (the static report and the complexity table are not)
TIMED_JOBS = ("op", "op_1thread", "network", "flare_", "host_path")


def run_verdict(machine: dict[str, dict], sections: dict) -> dict:
    """The run's verdict: the machine's state during every timed job, and the spread of every
    timed quantity the sections report."""
    timed = {name: record for name, record in machine.items() if name.startswith(TIMED_JOBS)}
    unstable = []
    op = sections.get("op") or {}
    if op.get("kind") == "gpu":
        unstable += [f"op {r['provider']} {r['dtype']} {r['mode']} {tuple(r['shape'])}"
                     for r in (op.get("data") or {}).get("rows", []) if r.get("stable") is False]
    else:  # the CPU op's headline figures: a row's own instability is marked on that row
        from bench.bench_cpu_op import headline_unstable

        for name, data in (("op", op.get("data")), ("op 1 thread", op.get("one_thread"))):
            unstable += headline_unstable((data or {}).get("summary", {}), name)
    for case in (sections.get("network") or {}).get("cases", []):
        unstable += [f"network {case['case']} {case['dtype']} {b}" for b, r in case["results"].items()
                     if b != "reference" and r.get("stable") is False]
    for case in (sections.get("host_path") or {}).get("cases", []):
        unstable += [f"host path {case['slices']} slices {side}" for side, s in case["sides"].items()
                     if side != "nnunet" and s["host"] and s["host"]["stable"] is False]
    return judge(list(timed.values()), unstable)


if __name__ == "__main__":
    sys.exit(main())
