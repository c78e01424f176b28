"""CPU benchmark of InceptionDWConv3d: the fused `cpu` backend and torch.compile of the reference
against `reference` (split + oneDNN convs + cat), on the released network's 28 calls.

For each distinct call (batch 1, 96x128x128 patch; identical shapes timed once and weighted by
their count), in one process and under one allocator setting: median forward and
forward+backward times of every provider, speedups over `reference`, and each provider's
effective bandwidth (bytes read + written by the op's roofline: 2|x| forward, 4.5|x|
forward+backward). That bandwidth is given as a fraction of a memory copy measured in the same
run on buffers four times the last-level cache, and only for calls whose data does not fit that
cache; calls that fit are marked cache-resident (a warm repeat runs from cache, where a fraction
of a memory copy means nothing). Also recorded: a copy on the call's own size and x.clone()
(allocate, read, write: the least an out-of-place op costs).

    python -m bench.bench_cpu_op [--threads 2] [--quick] [--smoke] [--providers reference cpu compile]
                                 [--budget S] [--out FILE]

Results: FILE (JSON) and FILE with .md; by default bench/results/local/cpu_op_<UTC time>.json.
`make bench`/`make bench-cpu` run it with glibc told to keep freed memory
(MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_); the settings in force are recorded.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from bench.harness import (cache_resident, default_out, dram_copy_bandwidth, environment, geomean,
                    network_layer_calls, write_atomic, write_json)
from bench.machine import (HEADLINE_SPREAD_LIMIT, SPREAD_LIMIT, MachineMonitor, geomean_spread, interleaved, judge,
                           paired_ratios, repeats_for)

PROVIDERS = ("reference", "cpu", "compile")
ROOFLINE_FACTOR = {"fwd": 2.0, "fwdbwd": 4.5}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="only the four smaller shapes, short budgets")
    parser.add_argument("--smoke", action="store_true",
                        help="dry run of every code path: spatial sizes / 16, tiny budgets (seconds)")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS),
                        help="what to time; reference is always timed (default: all)")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per measurement (default 1.0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default bench/results/local/cpu_op_<UTC time>.json)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.budget <= 0:
        parser.error("--budget must be positive")
    if "reference" not in args.providers:
        args.providers = ["reference", *args.providers]
    return args


def step(fn, x, args, grad_y, mode):
    import torch

    if mode == "fwd":
        return lambda: fn(x, *args)
    inputs = [x] + args

    def run():
        y = fn(x, *args)
        torch.autograd.grad(y, inputs, grad_y)
    return run


def provider_fn(name):
    import torch
    import fusionseg_kernels as fk

    if name == "reference":
        return fk.inception_dwconv3d_reference
    if name == "compile":
        # inductor's C++ build looks for a CUDA runtime and warns on a CPU-only machine: noise here
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        torch._dynamo.reset()  # one compilation per shape (and mode, through autograd)
        return torch.compile(fk.inception_dwconv3d_reference, dynamic=False)
    return lambda x, *a: fk.inception_dwconv3d(x, *a, backend=name)


def bench_layer(shape, gc, providers, budget_s, dram_copy):
    """One call's times: the providers interleaved (reference, cpu, compile, reference, ...), every
    repeat kept; medians, minima and spreads; speedups from the medians of the same interleaved
    run. A row is `stable` when every one of its timed quantities is."""
    import torch

    from fusionseg_kernels.testing import make_op_args

    x = torch.randn(shape)
    args = make_op_args(shape[1], gc, dtype=torch.float32)
    xg = x.clone().requires_grad_(True)
    args_g = [a.detach().clone().requires_grad_(True) for a in args]
    grad_y = torch.randn(shape)
    nbytes = x.numel() * x.element_size()
    out = torch.empty_like(x)
    llc = dram_copy["last_level_cache_bytes"]
    r = {"shape": list(shape), "gc": gc, "dtype": "float32", "x_bytes": nbytes, "x_MB": nbytes / 1e6}
    copies = {"copy": lambda: out.copy_(x), "clone": lambda: x.clone()}
    copy_t = interleaved(copies, repeats_for(copies["clone"], budget_s / 2), warmup=1)
    r["copy_same_size_s"], r["clone_s"] = copy_t["copy"].median, copy_t["clone"].median
    r["copy_same_size_GBps"] = 2 * nbytes / r["copy_same_size_s"] / 1e9
    r["cache_resident"] = {m: cache_resident(int(f * nbytes), llc) for m, f in ROOFLINE_FACTOR.items()}
    r["times_s"], r["compile_s"], r["timings"], r["speedup_repeats"] = {name: {} for name in providers}, {}, {}, {}
    fns = {name: provider_fn(name) for name in providers}
    for mode, (x_, a_) in (("fwd", (x, args)), ("fwdbwd", (xg, args_g))):
        runs = {name: step(fns[name], x_, a_, grad_y, mode) for name in providers}
        if "compile" in runs:  # the compile time is kept out of the timing
            t0 = time.perf_counter()
            runs["compile"]()
            r["compile_s"][mode] = time.perf_counter() - t0
        repeats = repeats_for(runs["reference"], budget_s / len(runs), min_repeats=7, max_repeats=30)
        timed = interleaved(runs, repeats, warmup=1)
        for name, t in timed.items():
            r["times_s"][name][mode] = t.median
            r["timings"][f"{name} {mode}"] = t.as_dict()
        for name in providers:
            ratios = paired_ratios(timed["reference"], timed[name])
            r["speedup_repeats"].setdefault(name, {})[mode] = ratios.as_dict()
    r["timings"].update({k: t.as_dict() for k, t in copy_t.items()})
    # a row stands when its speedups do: the spread of the per-repeat ratios of the interleaved
    # pairs (each side's own spread is kept in "timings"; a drift that hits both cancels)
    r["unstable"] = [f"{name} {mode}" for name, modes in r["speedup_repeats"].items() if name != "reference"
                     for mode, t in modes.items() if not t["stable"]]
    r["stable"] = not r["unstable"]
    ref = r["times_s"]["reference"]
    r["speedup"] = {n: {m: ref[m] / t[m] for m in t} for n, t in r["times_s"].items()}
    r["bandwidth_GBps"] = {n: {m: ROOFLINE_FACTOR[m] * nbytes / t[m] / 1e9 for m in t}
                           for n, t in r["times_s"].items()}
    r["fraction_of_dram_copy"] = {
        n: {m: None if r["cache_resident"][m] else bw[m] * 1e9 / dram_copy["bytes_per_s"] for m in bw}
        for n, bw in r["bandwidth_GBps"].items()}
    if "cpu" in r["times_s"]:
        r["cpu_fwd_over_clone"] = r["times_s"]["cpu"]["fwd"] / r["clone_s"]
    return r


def summarize(results, providers):
    weights = [r["calls"] for r in results]
    largest = max(results, key=lambda r: r["x_bytes"])
    summary = {"calls": sum(weights), "largest_shape": largest["shape"], "geomean_speedup": {}}
    summary["geomean_speedup_spread"] = {}
    for name in providers:
        if name == "reference":
            continue
        summary["geomean_speedup"][name] = {
            m: geomean([r["speedup"][name][m] for r in results], weights) for m in ROOFLINE_FACTOR}
        # how much each geometric mean would move in a repeated run (bootstrap over the repeats)
        summary["geomean_speedup_spread"][name] = {
            m: geomean_spread([r["speedup_repeats"][name][m]["times_s"] for r in results], weights)
            for m in ROOFLINE_FACTOR}
    if "cpu" in providers:
        summary["largest_cpu_fwd_over_clone"] = largest["cpu_fwd_over_clone"]
    return summary


def headline_unstable(summary: dict, prefix: str) -> list[str]:
    """The geometric means whose bootstrap spread is above the headline limit (they decide the
    run's verdict; a single row's instability is marked on that row)."""
    spreads = summary.get("geomean_speedup_spread", {})
    return [f"{prefix} geometric mean {name} {mode}" for name, modes in spreads.items()
            for mode, spread in modes.items() if spread > HEADLINE_SPREAD_LIMIT]


def _fraction(value):
    return "cache-resident" if value is None else f"{value:.0%}"


def markdown(result) -> str:
    env, results, summary = result["environment"], result["results"], result["summary"]
    providers = result["providers"]
    fused = [p for p in providers if p != "reference"]
    dram = result["dram_copy"]
    verdict = result.get("verdict") or {"quiet": True, "reasons": []}
    lines = [f"**UNRELIABLE**: {'; '.join(verdict['reasons'])}", ""] if not verdict["quiet"] else []
    lines += [
        f"CPU op benchmark — {env['device']}, {env['threads']} threads, torch {env['torch']}, "
        f"commit {env['commit'][:12]}{'-dirty' if env.get('dirty') else ''}, {env['date_utc']}, "
        f"allocator {env['allocator_env'] or 'glibc default'}",
        "",
        f"Memory copy reference: {dram['bytes_per_s'] / 1e9:.1f} GB/s (read + write, "
        f"{dram['buffer_bytes'] / 2**20:.0f} MiB buffers; last-level cache "
        f"{dram['last_level_cache_bytes'] / 2**20:.0f} MiB). Fractions are given for calls whose "
        "roofline bytes exceed that cache; the others are cache-resident.",
        "",
    ]
    head = ["shape (N,C,D,H,W)", "gc", "calls", "stable", "x MB", "clone ms", "ref fwd ms"]
    head += [f"{p} fwd ms" for p in fused] + [f"{p} fwd speedup" for p in fused]
    head += ["ref fwd+bwd ms"] + [f"{p} fwd+bwd ms" for p in fused] + [f"{p} fwd+bwd speedup" for p in fused]
    if "cpu" in fused:
        head += ["cpu fwd / clone", "cpu fwd GB/s (of memory copy)", "cpu fwd+bwd GB/s (of memory copy)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        t, s = r["times_s"], r["speedup"]
        cells = [str(tuple(r["shape"])), str(r["gc"]), str(r["calls"]), "yes" if r.get("stable", True) else "**no**",
                 f"{r['x_MB']:.1f}",
                 f"{r['clone_s'] * 1e3:.2f}", f"{t['reference']['fwd'] * 1e3:.2f}"]
        cells += [f"{t[p]['fwd'] * 1e3:.2f}" for p in fused] + [f"{s[p]['fwd']:.2f}x" for p in fused]
        cells += [f"{t['reference']['fwdbwd'] * 1e3:.1f}"] + [f"{t[p]['fwdbwd'] * 1e3:.1f}" for p in fused]
        cells += [f"{s[p]['fwdbwd']:.2f}x" for p in fused]
        if "cpu" in fused:
            bw, fr = r["bandwidth_GBps"]["cpu"], r["fraction_of_dram_copy"]["cpu"]
            cells += [f"{r['cpu_fwd_over_clone']:.2f}", f"{bw['fwd']:.1f} ({_fraction(fr['fwd'])})",
                      f"{bw['fwdbwd']:.1f} ({_fraction(fr['fwdbwd'])})"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    mark = "" if verdict["quiet"] else " (UNRELIABLE: see the first line)"
    for p, g in summary["geomean_speedup"].items():
        lines.append(f"Geometric mean over the network's {summary['calls']} calls, {p} vs reference: "
                     f"forward **{g['fwd']:.2f}x**, forward+backward **{g['fwdbwd']:.2f}x**{mark}.")
    if "largest_cpu_fwd_over_clone" in summary:
        lines.append(f"Largest call {tuple(summary['largest_shape'])}: fused forward = "
                     f"**{summary['largest_cpu_fwd_over_clone']:.2f}x** the time of x.clone().")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import fusionseg_kernels as fk

    providers = list(args.providers)
    if "cpu" in providers and not fk.extension_available():
        print("bench_cpu_op: the C++ extension is not built (run `make build`); timing without `cpu`",
              file=sys.stderr)
        providers.remove("cpu")
    torch.set_num_threads(args.threads)
    calls = network_layer_calls(batch=1, scale=16 if args.smoke else 1)
    budget = 0.02 if args.smoke else 0.3 if args.quick else args.budget
    if args.quick:
        calls = [c for c in calls if c[0][2] <= 48][:4]
    out = args.out or default_out("cpu_op")
    env = environment("cpu")
    dram = dram_copy_bandwidth(budget_s=budget, min_bytes=(16 << 20) if args.smoke else (256 << 20))
    print(f"memory copy: {dram['bytes_per_s'] / 1e9:.1f} GB/s on {dram['buffer_bytes'] / 2**20:.0f} MiB "
          f"buffers; providers {providers}", flush=True)
    results = []
    with MachineMonitor(f"cpu op, {args.threads} threads") as monitor:
        for shape, gc, count in calls:
            r = bench_layer(shape, gc, providers, budget, dram)
            r["calls"] = count
            results.append(r)
            mark = ("" if r["stable"] else
                    f"  [UNSTABLE: speedup spread above {SPREAD_LIMIT:.0%} in {', '.join(r['unstable'])}]")
            speedups = ", ".join(f"{p} fwd {s['fwd']:.2f}x fwd+bwd {s['fwdbwd']:.2f}x"
                                 for p, s in r["speedup"].items() if p != "reference")
            print(f"{tuple(shape)} gc={gc} x{count}: {speedups}{mark}", flush=True)
    unstable = headline_unstable(summarize(results, providers), "op")
    result = {"benchmark": "cpu_op", "environment": env, "providers": providers, "quick": args.quick,
              "smoke": args.smoke, "budget_s": budget, "threads": args.threads, "dram_copy": dram,
              "machine": monitor.record, "verdict": judge([monitor.record], unstable),
              "summary": summarize(results, providers), "results": results}
    write_json(out, result)
    md = markdown(result)
    write_atomic(out.with_suffix(".md"), md)
    print(md)
    print(f"wrote {out}")
    if not result["verdict"]["quiet"]:
        print(f"UNRELIABLE: {'; '.join(result['verdict']['reasons'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
