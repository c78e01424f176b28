"""Whole-network benchmark: the released DualBranchUNet with backend="reference" vs the fused backends.

Variants (``--variants``; by default all of them for each fused backend B):
- ``reference``: PyTorch's convolutions, InstanceNorm3d and LeakyReLU;
- ``B-op``: the fused InceptionDWConv3d only (PyTorch's InstanceNorm3d and LeakyReLU);
- ``B``: the fused op and the fused InstanceNorm + LeakyReLU (the network's default);
- ``B-cl``: as ``B`` with the weights and the input in channels_last_3d (CPU only).

Measures, in one process on one device, with the same weights and the same allocator settings:
- inference: forward of batch 1 (default patch 96×128×128), no_grad, eval mode;
- training step: batch 2, forward + cross-entropy + backward + gradient clipping (12, as the
  release) + AdamW (lr 8e-4, wd 0.01, eps 1e-5) step;
in float32 (CPU and GPU) and bf16 autocast (GPU). The backends are timed interleaved (one
iteration of each in turn, per repeat) so that drift on a shared machine hits them alike; medians
are reported. One extra profiled iteration per variant gives the share of time spent in
InceptionDWConv3d (torch.profiler; forward: the time inside the 28 layers' forward; backward: the
autograd nodes whose sequence number belongs to an op run inside those layers) and the operators
with the largest shares of self time.

CPU allocator: page faults on fresh large allocations can double a CPU time; glibc's settings
apply to both sides equally here because both run in this process. The settings in force are
recorded; ``--keep-freed-memory`` re-executes the script with glibc told to keep freed memory
(MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736).

Usage:
    python -m bench.bench_network --device cpu --quick --keep-freed-memory
    python -m bench.bench_network --device cuda            # fp32 and bf16, all built GPU backends
    python -m bench.bench_network --smoke                  # seconds: tiny patches, every code path
Results: --out FILE, by default bench/results/local/network_<device>_<UTC time>.json (written to a
temporary name, then renamed).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from fusionseg_kernels.ops.inception_dwconv3d.dispatch import available_backends

from bench.harness import default_out, quiet_profiler, reexec_keeping_freed_memory, write_json
from bench.machine import MachineMonitor, Timings, judge, paired_ratios
from bench.harness import environment as common_environment

IDC_RANGE = "fusionseg.InceptionDWConv3d"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--backends", nargs="+", default=None,
                   help="fused backends to compare with 'reference' (default: cpu on CPU; cuda and triton on GPU, "
                        "those that are available)")
    p.add_argument("--variants", nargs="+", default=None,
                   help="what to time beside 'reference': B-op, B, B-cl for a fused backend B (default: all of them)")
    p.add_argument("--patch", nargs=3, type=int, default=[96, 128, 128], metavar=("D", "H", "W"),
                   help="inference patch (batch 1)")
    p.add_argument("--train-patch", nargs=3, type=int, default=None, metavar=("D", "H", "W"),
                   help="training patch (batch 2); default: --patch")
    p.add_argument("--repeats", type=int, default=None, help="timed iterations per backend (median reported)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16"), default=None,
                   help="default: fp32 on CPU, fp32 and bf16 autocast on GPU")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="CPU-friendly: inference at --patch with 3 repeats, training at 48×64×64 with 2 repeats, "
                        "1 warm-up")
    p.add_argument("--smoke", action="store_true",
                   help="dry run in seconds: 16x32x32 patches, 1 repeat, no warm-up")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="re-run with glibc keeping freed memory (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) "
                        "unless already set")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None,
                   help="result file (default: bench/results/local/network_<device>_<UTC time>.json)")
    args = p.parse_args(argv)
    if args.smoke:
        args.patch, args.train_patch = [16, 32, 32], [16, 32, 32]
        args.repeats, args.warmup = args.repeats or 1, 0
    if args.quick:
        args.train_patch = args.train_patch or [48, 64, 64]
        args.repeats = args.repeats or 3
        args.warmup = args.warmup if args.warmup is not None else 1
    args.train_patch = args.train_patch or args.patch
    args.repeats = args.repeats or (5 if args.device == "cpu" else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.device == "cpu" else 3)
    args.dtypes = args.dtypes or (["fp32"] if args.device == "cpu" else ["fp32", "bf16"])
    if args.device == "cpu" and "bf16" in args.dtypes:
        p.error("bf16 autocast is measured on the GPU only")
    return args


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device: str, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def variant_names(backends: list[str], device: str) -> list[str]:
    names = []
    for b in backends:
        names += [f"{b}-op", b] + ([f"{b}-cl"] if device == "cpu" else [])
    return names


def parse_variant(name: str) -> tuple[str, str | None, bool]:
    """(InceptionDWConv3d backend, norm backend (None: the network's default for it), channels_last)."""
    if name == "reference":
        return "reference", None, False
    backend, _, suffix = name.partition("-")
    if suffix not in ("", "op", "cl"):
        raise ValueError(f"unknown variant {name!r}: reference, B-op, B or B-cl for a backend B")
    return backend, "reference" if suffix == "op" else None, suffix == "cl"


def configure(model, variant: str) -> torch.memory_format:
    """Puts the model in `variant`'s configuration; returns the memory format its input takes."""
    backend, norm_backend, channels_last = parse_variant(variant)
    model.set_backend(backend, norm_backend=norm_backend)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    return layout


def op_shares(prof, device: str, top: int = 8) -> list[dict]:
    """The operators with the largest shares of self time (CPU time on the CPU, kernel time on the GPU)."""
    totals: dict[str, list] = {}
    for e in prof.key_averages():
        t = e.self_device_time_total if device == "cuda" else e.self_cpu_time_total
        if t > 0 and not e.key.startswith(("bench.", IDC_RANGE)):
            totals[e.key] = [t, e.count]
    whole = sum(t for t, _ in totals.values()) or 1
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return [{"op": k, "share": t / whole, "self_us": t, "calls": n} for k, (t, n) in ranked]


class IDCRanges:
    """Wraps every InceptionDWConv3d forward in a profiler range (only costs when profiling)."""

    def __init__(self, model):
        self.handles = []
        for m in model.inception_layers():
            self.handles.append(m.register_forward_pre_hook(self._enter))
            self.handles.append(m.register_forward_hook(self._exit))

    @staticmethod
    def _enter(module, args):
        module._bench_range = record_function(IDC_RANGE)
        module._bench_range.__enter__()

    @staticmethod
    def _exit(module, args, output):
        module._bench_range.__exit__(None, None, None)
        del module._bench_range

    def remove(self):
        for h in self.handles:
            h.remove()


def idc_share(prof, device: str) -> dict:
    """Time in InceptionDWConv3d (forward ranges + the backward nodes of the ops run inside them),
    against the whole profiled step; CPU time on the CPU, kernel time on the GPU."""
    events = prof.events()
    use_device = device == "cuda"

    def t(e, self_only=False):
        if use_device:
            return e.self_device_time_total if self_only else e.device_time_total
        return e.self_cpu_time_total if self_only else e.cpu_time_total

    ranges = [e for e in events if e.name == IDC_RANGE]
    seq = set()
    stack = list(ranges)
    while stack:
        e = stack.pop()
        if e.sequence_nr is not None and e.sequence_nr >= 0 and e.name != IDC_RANGE:
            seq.add(e.sequence_nr)
        stack.extend(e.cpu_children)
    forward = sum(t(e) for e in ranges)
    backward = sum(t(e) for e in events
                   if e.name.startswith("autograd::engine::evaluate_function:") and e.sequence_nr in seq)
    if use_device:
        total = sum(t(e, self_only=True) for e in events)
    else:
        steps = [e for e in events if e.name == "bench.step"]
        total = sum(t(e) for e in steps)
    return {"idc_forward_us": forward, "idc_backward_us": backward, "step_profiled_us": total,
            "idc_share": (forward + backward) / total if total else None, "idc_calls": len(ranges)}


def make_inference(model, x, device, dtype):
    def step():
        with torch.no_grad(), autocast(device, dtype):
            return model(x)
    return step


def make_training(model, x, target, device, dtype):
    opt = torch.optim.AdamW(model.parameters(), lr=8e-4, weight_decay=0.01, eps=1e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        opt.step()
        return loss
    return step


def run_case(model, variants, make_step, device, repeats, warmup, profile_it):
    """make_step(layout) -> a step on an input in that memory format; the variants interleaved."""
    steps = {}
    for v in variants:  # warm-up (allocator, oneDNN primitive caches, autotuning)
        steps[v] = make_step(configure(model, v))
        for _ in range(warmup):
            steps[v]()
        sync(device)
    times = {v: [] for v in variants}
    for _ in range(repeats):
        for v in variants:  # interleaved
            configure(model, v)
            sync(device)
            t0 = time.perf_counter()
            steps[v]()
            sync(device)
            times[v].append(time.perf_counter() - t0)
    out = {v: Timings(times[v]).as_dict() for v in variants}
    for v in variants:  # the speedup per interleaved repeat: its spread says whether the ratio holds
        ratios = paired_ratios(Timings(times["reference"]), Timings(times[v]))
        out[v]["speedup_spread"] = ratios.spread
        out[v]["stable"] = ratios.stable if v != "reference" else out[v]["stable"]
    if profile_it:
        ranges = IDCRanges(model)
        try:
            for v in variants:
                configure(model, v)
                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
                with profile(activities=acts) as prof:
                    with record_function("bench.step"):
                        steps[v]()
                    sync(device)
                out[v]["profile"] = idc_share(prof, device)
                out[v]["profile"]["top_ops"] = op_shares(prof, device)
        finally:
            ranges.remove()
    configure(model, "reference")
    ref = out["reference"]["median_s"]
    for v in variants:
        out[v]["speedup_vs_reference"] = ref / out[v]["median_s"]
    return out


def environment(device: str) -> dict:
    info = common_environment(device)
    info["tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
    info["loadavg_start"] = info.pop("loadavg")  # other processes on a shared machine skew CPU times
    return info


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.keep_freed_memory:
        reexec_keeping_freed_memory("bench.bench_network")
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_profiler()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device", file=sys.stderr)
            return 2
        torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32, not TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    from fusionseg_kernels.models import DualBranchUNet

    fused = args.backends or available_backends(args.device, fused_only=True)
    fused = [b for b in fused if b != "reference"]
    backends = ["reference"] + (args.variants or variant_names(fused, args.device))
    for v in backends:
        if parse_variant(v)[2] and args.device != "cpu":
            print(f"variant {v}: channels_last is measured on the CPU only", file=sys.stderr)
            return 2
    torch.manual_seed(0)
    model = DualBranchUNet().to(args.device)
    gen = torch.Generator().manual_seed(1)
    result = {"benchmark": "network", "network": "DualBranchUNet (released configuration)",
              "environment": environment(args.device), "backends": backends,
              "settings": {"patch_inference": args.patch, "batch_inference": 1, "patch_train": args.train_patch,
                           "batch_train": 2, "repeats": args.repeats, "warmup": args.warmup,
                           "quick": args.quick, "smoke": args.smoke, "dtypes": args.dtypes, "loss": "cross-entropy",
                           "optimizer": "AdamW(8e-4, wd 0.01, eps 1e-5)",
                           "grad_clip": 12.0},
              "cases": []}
    print(f"device: {result['environment']['device']}, threads {torch.get_num_threads()}, backends {backends}, "
          f"allocator env {result['environment']['allocator_env']}", flush=True)
    with MachineMonitor(f"network, {torch.get_num_threads()} threads", gpu=args.device == "cuda") as monitor:
        run_cases(args, model, backends, gen, result)
    unstable = [f"{c['case']} {c['dtype']} {b}" for c in result["cases"] for b, r in c["results"].items()
                if not r["stable"]]
    result["machine"], result["verdict"] = monitor.record, judge([monitor.record], unstable)
    result["environment"]["loadavg_end"] = os.getloadavg()
    print(f"load average at start {result['environment']['loadavg_start']}, at end {os.getloadavg()}")
    if not result["verdict"]["quiet"]:
        print(f"UNRELIABLE: {'; '.join(result['verdict']['reasons'])}")
    out = args.out or default_out(f"network_{args.device}")
    write_json(out, result)
    print(f"wrote {out}")
    return 0


def run_cases(args, model, backends, gen, result) -> None:
    """Inference forward and training step per dtype, each case's backends interleaved."""
    for dtype in args.dtypes:
        x = torch.randn(1, 1, *args.patch, generator=gen).to(args.device)
        model.eval()
        res = run_case(model, backends, _in_layout(make_inference, model, x, args.device, dtype),
                       args.device, args.repeats, args.warmup, not args.no_profile)
        result["cases"].append({"case": "inference forward", "dtype": dtype, "shape": [1, 1, *args.patch],
                                "results": res})
        _print_case("inference forward", dtype, [1, 1, *args.patch], res)
        del x
        if args.skip_train:
            continue
        x = torch.randn(2, 1, *args.train_patch, generator=gen).to(args.device)
        target = torch.randint(0, 2, (2, *args.train_patch), generator=gen).to(args.device)
        model.train()
        res = run_case(model, backends, _in_layout(make_training, model, x, args.device, dtype, target),
                       args.device, args.repeats, args.warmup, not args.no_profile)
        result["cases"].append({"case": "training step", "dtype": dtype, "shape": [2, 1, *args.train_patch],
                                "results": res})
        _print_case("training step", dtype, [2, 1, *args.train_patch], res)
        del x, target


def _in_layout(make_step, model, x, device, dtype, target=None):
    """make_step(layout) for run_case: the step on x in that memory format."""
    def make(layout):
        xl = x.contiguous(memory_format=layout)
        if target is None:
            return make_step(model, xl, device, dtype)
        return make_step(model, xl, target, device, dtype)
    return make


def _print_case(case, dtype, shape, res):
    print(f"\n{case}, {dtype}, input {tuple(shape)}")
    print(f"  {'variant':<10} {'median s':>9} {'min s':>8} {'speedup':>8} {'IDC share':>10} {'IDC s':>7} "
          f"{'profiled s':>10}")
    for b, r in res.items():
        prof = r.get("profile")
        if prof and prof["idc_share"] is not None:
            idc_s = (prof["idc_forward_us"] + prof["idc_backward_us"]) / 1e6
            extra = f"{100 * prof['idc_share']:9.1f}% {idc_s:7.3f} {prof['step_profiled_us'] / 1e6:10.3f}"
        else:
            extra = f"{'-':>10} {'-':>7} {'-':>10}"
        spread = "-" if r["spread"] is None else f"{r['spread']:.0%}"
        mark = "" if r["stable"] else "  UNSTABLE"
        print(f"  {b:<10} {r['median_s']:9.3f} {r['min_s']:8.3f} {r['speedup_vs_reference']:7.2f}x {extra} "
              f"spread {spread}{mark}")
    for b, r in res.items():
        top = (r.get("profile") or {}).get("top_ops")
        if top:
            print(f"  {b}: " + ", ".join(f"{o['op']} {o['share']:.0%} ({o['calls']})" for o in top[:6]))
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
