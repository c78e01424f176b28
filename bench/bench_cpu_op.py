"""CPU benchmark of InceptionDWConv3d: fused `cpu` backend vs `reference` (split + oneDNN convs + cat).

For each of the released network's 28 calls (batch 1, 96x128x128 patch; identical shapes timed
once and weighted by their count), in one process and under one allocator setting:
median forward and forward+backward times, speedups, the fused kernel's effective bandwidth
(SPEC §2 roofline: 2|x| forward, 4.5|x| forward+backward) as a fraction of a copy bandwidth
measured on the same tensor (y.copy_(x): |x| read + |x| written), and x.clone() (allocate, read,
write: the least an out-of-place op costs).

    python bench/bench_cpu_op.py [--threads 2] [--quick] [--out bench/results/cpu_op.json]

Run it through `make bench`/`make bench-cpu`, which set glibc to keep freed memory
(MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_, SPEC §6); the settings are recorded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS_DIR, environment, geomean, median_time, network_layer_calls,  # noqa: E402
                    op_arguments, write_atomic, write_json)

import fusionseg_kernels as fk  # noqa: E402


def forward_fn(x, args, backend):
    return lambda: fk.inception_dwconv3d(x, *args, backend=backend)


def forward_backward_fn(x, args, grad_y, backend):
    inputs = [x] + args

    def run():
        y = fk.inception_dwconv3d(x, *args, backend=backend)
        torch.autograd.grad(y, inputs, grad_y)
    return run


def bench_layer(shape, gc, budget_s):
    x = torch.randn(shape)
    args = op_arguments(shape[1], gc)
    xg = x.clone().requires_grad_(True)
    args_g = [a.detach().clone().requires_grad_(True) for a in args]
    grad_y = torch.randn(shape)
    nbytes = x.numel() * x.element_size()
    out = torch.empty_like(x)
    r = {"shape": list(shape), "gc": gc, "x_MB": nbytes / 1e6}
    r["copy_s"] = median_time(lambda: out.copy_(x), budget_s=budget_s)
    r["clone_s"] = median_time(lambda: x.clone(), budget_s=budget_s)
    for backend in ("reference", "cpu"):
        r[f"{backend}_fwd_s"] = median_time(forward_fn(x, args, backend), budget_s=budget_s)
        r[f"{backend}_fwdbwd_s"] = median_time(forward_backward_fn(xg, args_g, grad_y, backend),
                                               min_repeats=2, budget_s=budget_s)
    copy_bw = 2 * nbytes / r["copy_s"]
    r["copy_GBps"] = copy_bw / 1e9
    r["speedup_fwd"] = r["reference_fwd_s"] / r["cpu_fwd_s"]
    r["speedup_fwdbwd"] = r["reference_fwdbwd_s"] / r["cpu_fwdbwd_s"]
    r["cpu_fwd_over_clone"] = r["cpu_fwd_s"] / r["clone_s"]
    r["cpu_fwd_GBps"] = 2 * nbytes / r["cpu_fwd_s"] / 1e9
    r["cpu_fwdbwd_GBps"] = 4.5 * nbytes / r["cpu_fwdbwd_s"] / 1e9
    r["cpu_fwd_frac_copy"] = r["cpu_fwd_GBps"] * 1e9 / copy_bw
    r["cpu_fwdbwd_frac_copy"] = r["cpu_fwdbwd_GBps"] * 1e9 / copy_bw
    return r


def markdown(results, summary, env) -> str:
    lines = [
        f"CPU op benchmark — {env['device']}, {env['threads']} threads, torch {env['torch']}, "
        f"commit {env['commit']}, {env['date']}, allocator {env['allocator_env'] or 'glibc default'}",
        "",
        "| shape (N,C,D,H,W) | gc | calls | x MB | clone ms | ref fwd ms | cpu fwd ms | fwd speedup | "
        "cpu fwd / clone | cpu fwd GB/s (of copy) | ref fwd+bwd ms | cpu fwd+bwd ms | fwd+bwd speedup | "
        "cpu fwd+bwd GB/s (of copy) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {tuple(r['shape'])} | {r['gc']} | {r['calls']} | {r['x_MB']:.1f} | {r['clone_s']*1e3:.2f} | "
            f"{r['reference_fwd_s']*1e3:.2f} | {r['cpu_fwd_s']*1e3:.2f} | {r['speedup_fwd']:.2f}x | "
            f"{r['cpu_fwd_over_clone']:.2f} | {r['cpu_fwd_GBps']:.1f} ({r['cpu_fwd_frac_copy']:.0%}) | "
            f"{r['reference_fwdbwd_s']*1e3:.1f} | {r['cpu_fwdbwd_s']*1e3:.1f} | {r['speedup_fwdbwd']:.2f}x | "
            f"{r['cpu_fwdbwd_GBps']:.1f} ({r['cpu_fwdbwd_frac_copy']:.0%}) |")
    lines += [
        "",
        f"Geometric mean over the network's {summary['calls']} calls: forward **{summary['geomean_speedup_fwd']:.2f}x**, "
        f"forward+backward **{summary['geomean_speedup_fwdbwd']:.2f}x**; largest call {tuple(summary['largest_shape'])}: "
        f"fused forward = **{summary['largest_fwd_over_clone']:.2f}x** the time of x.clone().",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the CI machine)")
    parser.add_argument("--quick", action="store_true", help="only the smaller half of the shapes, short budgets")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per measurement (default 1.0)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "cpu_op.json")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if not fk.extension_available():
        print("bench_cpu_op: the C++ extension is not built; run `make build` first", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    calls = network_layer_calls("dual_branch", batch=1)
    if args.quick:
        calls = [c for c in calls if c[0][2] <= 48][:4]
    env = environment("cpu")
    results = []
    for shape, gc, count in calls:
        r = bench_layer(shape, gc, 0.3 if args.quick else args.budget)
        r["calls"] = count
        results.append(r)
        print(f"{tuple(shape)} gc={gc} x{count}: fwd {r['speedup_fwd']:.2f}x, fwd+bwd {r['speedup_fwdbwd']:.2f}x, "
              f"fwd/clone {r['cpu_fwd_over_clone']:.2f}", flush=True)
    weights = [r["calls"] for r in results]
    largest = max(results, key=lambda r: r["x_MB"])
    summary = {
        "calls": sum(weights),
        "geomean_speedup_fwd": geomean([r["speedup_fwd"] for r in results], weights),
        "geomean_speedup_fwdbwd": geomean([r["speedup_fwdbwd"] for r in results], weights),
        "largest_shape": largest["shape"],
        "largest_fwd_over_clone": largest["cpu_fwd_over_clone"],
    }
    write_json(args.out, {"environment": env, "summary": summary, "results": results})
    md = markdown(results, summary, env)
    write_atomic(args.out.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
