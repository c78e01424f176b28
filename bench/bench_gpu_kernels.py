#!/usr/bin/env python3
"""Kernel sweep of inception_dwconv3d over the released network's 28 layer shapes.

    python3 -m bench.bench_gpu_kernels                       # GPU: full sweep, JSON in bench/results/
    python3 -m bench.bench_gpu_kernels --quick --compile-shapes 2      # what bench/gpu_check.sh runs
    python3 -m bench.bench_gpu_kernels --precompile --jobs 12          # warm Triton's cache in parallel
    python3 -m bench.bench_gpu_kernels --smoke               # CPU dry run: tiny shapes, same code paths
    python3 -m bench.bench_gpu_kernels --write-gpu-table RESULT.json --passed triton cuda

Shapes: tests/data/idc_layer_shapes.json (28 calls, batch 1) at batch 2 of the 96x128x128 training
patch; each distinct shape is timed once and weighted by its number of calls in the aggregates.
dtypes fp32, fp16, bf16; modes "fwd" and "fwdbwd" (forward + autograd.grad for x, weights, biases).
Providers: "reference" (split, four F.conv3d, cat: cuDNN / PyTorch), "compile" (torch.compile of
the reference, one compile per shape and dtype, compile time recorded and kept out of the
timing), "triton", and "cuda" when the extension has CUDA kernels.

Timing: triton.testing.do_bench (median; it flushes L2 by writing a 256 MB buffer before every
call, so inputs are read from DRAM even when smaller than L2). Bandwidth: the roofline bytes (docs/op.md)
(2|x| forward, 4.5|x| forward+backward) / time, and its fraction of a device-to-device copy
(read + write) measured in the same run. Peak memory: torch.cuda.max_memory_allocated during one
call, minus what was allocated before it. Every provider's output (and gradients) is compared
with the reference in the same dtype; a mismatch is recorded and printed.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from bench.harness import ROOT, environment, network_layer_calls, write_json
from bench.machine import Timings
from fusionseg_kernels import inception_dwconv3d, inception_dwconv3d_reference
from fusionseg_kernels.ops.inception_dwconv3d.dispatch import GPU_TABLE_PATH
from fusionseg_kernels.testing import make_input, make_op_args

RESULTS_DIR = ROOT / "bench" / "results"
GPU_TABLE = GPU_TABLE_PATH
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ROOFLINE_FACTOR = {"fwd": 2.0, "fwdbwd": 4.5}  # bytes moved / |x| (docs/op.md)
# Relative L2 error vs the reference in the same dtype above which a result is flagged.
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


# ------------------------------------------------------------------------------- shapes

def layer_shapes(batch: int, scale: int = 1):
    """[(shape, gc, calls)] of the network's distinct InceptionDWConv3d calls, largest first."""
    return network_layer_calls(batch=batch, scale=scale)


def make_args(shape, gc, dtype, device, seed=0):
    """(x, the op's eight weight/bias arguments, grad_y) of one call."""
    x = make_input(shape, dtype=dtype, device=device, seed=seed)
    return x, make_op_args(shape[1], gc, dtype=dtype, device=device, seed=seed), \
        make_input(shape, dtype=dtype, device=device, seed=seed + 7)


# ------------------------------------------------------------------------------- providers

def available_providers(device: str, requested):
    """(providers to time, {skipped provider: why}): reference, torch.compile(reference) and every
    fused backend that runs here (triton on CPU tensors only under TRITON_INTERPRET=1, the
    --smoke dry run)."""
    from fusionseg_kernels.ops.inception_dwconv3d.dispatch import available_backends, can_run

    names = ["reference", "compile"] + available_backends(device, fused_only=True)
    skipped = {}
    for backend in ("triton", "cuda"):
        ok, why = can_run(backend, device)
        if ok and backend not in names:
            names.append(backend)
        elif not ok:
            skipped[backend] = why
    if requested:
        names = [n for n in names if n in requested]
    return names, skipped


def provider_fn(name: str):
    if name == "reference":
        return inception_dwconv3d_reference
    if name in ("triton", "cuda", "cpu"):
        return lambda x, *a: inception_dwconv3d(x, *a, backend=name)
    raise ValueError(name)


def step_fn(fn, mode, x, args, gy):
    if mode == "fwd":
        return lambda: fn(x, *args)
    inputs = [x] + args

    def fwd_bwd():
        y = fn(x, *args)
        return y, torch.autograd.grad(y, inputs, gy)
    return fwd_bwd


# ------------------------------------------------------------------------------- timing

def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, quick) -> Timings:
    """Every repeat's milliseconds (CUDA events through triton.testing.do_bench on a GPU; a warm-up
    and a few wall-clock repeats on the CPU), for medians and spreads."""
    if device == "cuda":
        import triton.testing

        warmup, rep = (10, 40) if quick else (25, 100)
        return Timings([float(t) for t in triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="all")])
    fn()
    times = Timings()
    for _ in range(4 if quick else 7):
        t0 = time.perf_counter()
        fn()
        times.add((time.perf_counter() - t0) * 1e3)
    return times


def copy_bandwidth(device, quick):
    """Bytes read + written per second of a device-to-device copy of 1 GiB (CPU: 256 MiB)."""
    n = (1 << 30 if device == "cuda" else 1 << 28) // 4
    src = torch.empty(n, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, quick).median
    return 2 * n * 4 / (ms * 1e-3), ms


def peak_extra_bytes(fn, device):
    if device != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return int(peak)


def rel_l2(a, b):
    a, b = a.double(), b.double()
    d = b.norm().item()
    return (a - b).norm().item() / d if d > 0 else (a - b).norm().item()


def check(out, ref, dtype):
    """Max relative L2 error over the output and gradients."""
    if isinstance(out, torch.Tensor):
        return rel_l2(out, ref)
    y, grads = out
    ry, rgrads = ref
    return max([rel_l2(y, ry)] + [rel_l2(g, r) for g, r in zip(grads, rgrads)])


# ------------------------------------------------------------------------------- sweep

def metadata(device):
    """The shared environment record, plus the device name the GPU table is keyed by."""
    info = environment(device)
    info["device_name"] = torch.cuda.get_device_name() if device == "cuda" else info["cpu"]
    return info


def _result(device, bw, copy_ms, providers, skipped, opts, rows, complete):
    return {"meta": metadata(device), "copy_bandwidth_bytes_per_s": bw, "copy_ms_1gib": copy_ms,
            "providers": providers, "skipped_providers": skipped, "batch": opts.batch,
            "scale": opts.scale, "quick": opts.quick, "complete": complete, "rows": rows,
            "summary": summarize(rows)}


def save(result, out: Path):
    write_json(out, result)


def run_sweep(opts, out_path: Path):
    """Runs the sweep; the JSON at `out_path` is rewritten after every shape, so a run cut short by a
    time limit still leaves its measurements (with "complete": false)."""
    device = opts.device
    dtypes = [DTYPES[d] for d in opts.dtypes]
    shapes = layer_shapes(opts.batch, scale=opts.scale)
    if opts.shapes > 0:  # the largest distinct calls only
        shapes = shapes[:opts.shapes]
    providers, skipped = available_providers(device, opts.providers)
    bw, copy_ms = copy_bandwidth(device, opts.quick)
    print(f"# {metadata(device)['device_name']}: copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    print(f"# providers {providers}; skipped {skipped}")
    compile_shapes = {s for s, _, _ in shapes[:opts.compile_shapes]} if opts.compile_shapes >= 0 else \
        {s for s, _, _ in shapes}
    rows = []
    import torch._dynamo
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    for dtype_name, dtype in zip(opts.dtypes, dtypes):
        for shape, gc, calls in shapes:
            x, args, gy = make_args(shape, gc, dtype, device)
            nbytes = x.numel() * x.element_size()
            for mode in opts.modes:
                xr = x.detach().requires_grad_(mode == "fwdbwd")
                ar = [a.detach().requires_grad_(mode == "fwdbwd") for a in args]
                ref_step = step_fn(inception_dwconv3d_reference, mode, xr, ar, gy)
                ref_out = ref_step()
                base = None
                for name in providers:
                    row = {"dtype": dtype_name, "mode": mode, "shape": list(shape), "gc": gc,
                           "calls": calls, "provider": name, "x_bytes": nbytes}
                    try:
                        if name == "compile":
                            if dtype_name not in opts.compile_dtypes or shape not in compile_shapes:
                                continue
                            torch._dynamo.reset()  # one compile per shape and dtype
                            fn = torch.compile(inception_dwconv3d_reference, dynamic=False)
                            step = step_fn(fn, mode, xr, ar, gy)
                            t0 = time.perf_counter()
                            step()
                            sync(device)
                            row["compile_s"] = round(time.perf_counter() - t0, 2)
                        else:
                            step = step_fn(provider_fn(name), mode, xr, ar, gy)
                            step()  # warm-up (Triton: autotune and compile)
                        out = step()
                        row["max_rel_l2_vs_reference"] = check(out, ref_out, dtype)
                        row["ok"] = row["max_rel_l2_vs_reference"] <= CHECK_TOLERANCE[dtype]
                        del out
                        row["peak_extra_bytes"] = peak_extra_bytes(step, device)
                        timed = time_ms(step, device, opts.quick)
                        ms = timed.median
                        row.update(spread=timed.spread, stable=timed.stable, repeats=len(timed.samples))
                    except Exception as err:  # record and go on: one broken provider must not stop the sweep
                        row.update(ok=False, error=f"{type(err).__name__}: {str(err)[:300]}")
                        rows.append(row)
                        print(f"! {name} {dtype_name} {mode} {shape}: {row['error']}")
                        continue
                    row["ms"] = ms
                    row["roofline_bytes"] = ROOFLINE_FACTOR[mode] * nbytes
                    row["bandwidth_gbs"] = row["roofline_bytes"] / (ms * 1e-3) / 1e9
                    row["fraction_of_copy"] = row["roofline_bytes"] / (ms * 1e-3) / bw
                    if name == "reference":
                        base = ms
                    row["speedup_vs_reference"] = base / ms if base else None
                    rows.append(row)
                del ref_out, ref_step
            del x, args, gy
            if device == "cuda":
                torch.cuda.empty_cache()
            save(_result(device, bw, copy_ms, providers, skipped, opts, rows, False), out_path)
    result = _result(device, bw, copy_ms, providers, skipped, opts, rows, True)
    save(result, out_path)
    return result


def summarize(rows):
    """Per (dtype, mode, provider): geometric-mean speedup over the 28 calls, slower-than-reference
    calls, and the issue's bandwidth targets (fwd >= 80 % of copy for |x| >= 32 MB, fwd+bwd >= 60 %)."""
    out = []
    keys = sorted({(r["dtype"], r["mode"], r["provider"]) for r in rows})
    for dtype, mode, provider in keys:
        sel = [r for r in rows if (r["dtype"], r["mode"], r["provider"]) == (dtype, mode, provider)]
        timed = [r for r in sel if r.get("speedup_vs_reference")]
        calls = sum(r["calls"] for r in timed)
        entry = {"dtype": dtype, "mode": mode, "provider": provider, "shapes": len(sel),
                 "calls_timed": calls, "all_ok": all(r.get("ok") for r in sel)}
        if timed:
            entry["geomean_speedup_per_call"] = math.exp(
                sum(r["calls"] * math.log(r["speedup_vs_reference"]) for r in timed) / calls)
            entry["calls_slower_than_reference"] = sum(r["calls"] for r in timed
                                                       if r["speedup_vs_reference"] < 1.0)
            big = [r for r in timed if r["x_bytes"] >= 32 << 20]
            if mode == "fwd" and big:
                entry["min_fraction_of_copy_x_ge_32MB"] = min(r["fraction_of_copy"] for r in big)
            if mode == "fwdbwd":
                entry["min_fraction_of_roofline"] = min(r["fraction_of_copy"] for r in timed)
        out.append(entry)
    return out


def print_table(result):
    rows = [r for r in result["rows"] if "ms" in r]
    print(f"\n{'dtype':5} {'mode':6} {'shape (N,C,D,H,W)':24} {'provider':9} {'ms':>9} "
          f"{'speedup':>7} {'GB/s':>7} {'%copy':>6} {'peak MB':>8} ok")
    for r in rows:
        peak = "" if r.get("peak_extra_bytes") is None else f"{r['peak_extra_bytes'] / 2**20:8.0f}"
        sp = "" if r.get("speedup_vs_reference") is None else f"{r['speedup_vs_reference']:7.2f}"
        print(f"{r['dtype']:5} {r['mode']:6} {str(tuple(r['shape'])):24} {r['provider']:9} "
              f"{r['ms']:9.3f} {sp:>7} {r['bandwidth_gbs']:7.0f} {100 * r['fraction_of_copy']:6.1f} "
              f"{peak:>8} {'yes' if r['ok'] else 'NO'}")
    print("\nsummary (geometric mean over the 28 calls, per call):")
    for s in result["summary"]:
        if s["provider"] == "reference":
            continue
        extra = ""
        if "min_fraction_of_copy_x_ge_32MB" in s:
            extra += f"  min fwd %copy (|x|>=32MB) {100 * s['min_fraction_of_copy_x_ge_32MB']:.0f}%"
        if "min_fraction_of_roofline" in s:
            extra += f"  min fwd+bwd %roofline {100 * s['min_fraction_of_roofline']:.0f}%"
        gm = s.get("geomean_speedup_per_call")
        print(f"  {s['dtype']:5} {s['mode']:6} {s['provider']:9} calls {s['calls_timed']:2}  "
              f"speedup {gm if gm is None else round(gm, 2)}  slower-than-reference calls "
              f"{s.get('calls_slower_than_reference')}  all correct {s['all_ok']}{extra}")


# ------------------------------------------------------------------------------- precompile

def _precompile_worker(job):
    """Compile (and run once) both Triton kernels for one dtype and config on every layer shape,
    through the same launch path the autotuner uses, so the on-disk cache then serves it."""
    dtype_name, cfg_index, batch, n_shapes = job
    import triton  # noqa: F401
    from fusionseg_kernels.ops.inception_dwconv3d import triton_impl as ti

    cfg = ti.GPU_CONFIGS[cfg_index]
    t0 = time.perf_counter()
    shapes = layer_shapes(batch)
    for shape, gc, _ in shapes[:n_shapes] if n_shapes > 0 else shapes:
        # only the calls whose autotuner would try this config (the config's width class)
        if cfg not in ti.launch_configs(shape[-1], ti.GPU_CONFIGS):
            continue
        x, args, gy = make_args(shape, gc, DTYPES[dtype_name], "cuda")
        ti.run_kernels_with_config(x, args, gy, cfg)
    torch.cuda.synchronize()
    return dtype_name, cfg_index, time.perf_counter() - t0


def precompile(opts):
    import multiprocessing as mp
    from fusionseg_kernels.ops.inception_dwconv3d import triton_impl as ti

    # dtypes in the order given (gpu_check.sh: bf16 first), every config of every width class
    jobs = [(d, i, opts.batch, opts.shapes) for d in opts.dtypes for i in range(len(ti.GPU_CONFIGS))]
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(min(opts.jobs, len(jobs))) as pool:
        for d, i, s in pool.imap_unordered(_precompile_worker, jobs):
            print(f"# precompiled {d} config {i} in {s:.1f} s", flush=True)
    print(f"# precompile: {len(jobs)} (dtype, config) jobs in {time.perf_counter() - t0:.1f} s")


# ------------------------------------------------------------------------------- GPU table

def write_gpu_table(result_path: Path, passed, mode_preference=("fwdbwd", "fwd")):
    """gpu_table.json entries {device_name, dtype, size_class, backend}: per dtype and size class
    (dispatch.size_class of x), the backend with the smallest summed time over that class's
    shapes (forward+backward if measured, else forward), among `passed` (backends whose GPU
    tests passed) and "reference"."""
    from fusionseg_kernels.ops.inception_dwconv3d.dispatch import gpu_table_key

    result = json.loads(Path(result_path).read_text())
    device_name = result["meta"]["device_name"]
    candidates = set(passed) | {"reference"}
    rows = [r for r in result["rows"] if "ms" in r and r.get("ok") and r["provider"] in candidates]
    entries = []
    for dtype in sorted({r["dtype"] for r in rows}):
        mode = next((m for m in mode_preference if any(r["mode"] == m and r["dtype"] == dtype for r in rows)), None)
        sel = [r for r in rows if r["dtype"] == dtype and r["mode"] == mode]
        classes: dict = {}
        for r in sel:
            _, table_dtype, cls = gpu_table_key(device_name, DTYPES[dtype], r["x_bytes"])
            classes.setdefault(cls, {}).setdefault(r["provider"], {})[tuple(r["shape"])] = r["ms"] * r["calls"]
        for cls, per_backend in sorted(classes.items()):
            shapes = set.intersection(*(set(v) for v in per_backend.values()))
            if not shapes:
                continue
            totals = {b: sum(v[s] for s in shapes) for b, v in per_backend.items()}
            best = min(totals, key=totals.get)
            entries.append({"device_name": device_name, "dtype": table_dtype, "size_class": cls,
                            "backend": best, "mode": mode,
                            "ms_weighted": {b: round(t, 4) for b, t in sorted(totals.items())}})
    old = {}
    try:
        old = json.loads(GPU_TABLE.read_text())
    except (OSError, ValueError):
        pass
    kept = [e for e in old.get("entries", []) if e.get("device_name") != device_name]
    table = {"note": ("Written by bench/gpu_check.sh from measured results of backends that passed "
                      "the GPU tests (bench/bench_gpu_kernels.py --write-gpu-table)."),
             "source": {"result": str(result_path), "commit": result["meta"].get("commit"),
                        "date_utc": result["meta"].get("date_utc"), "passed": sorted(passed)},
             "entries": kept + entries}
    GPU_TABLE.write_text(json.dumps(table, indent=1) + "\n")
    print(f"# wrote {len(entries)} entries for {device_name} to {GPU_TABLE}")
    return entries


# ------------------------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: cuda if available (cpu with --smoke)")
    p.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=list(DTYPES))
    p.add_argument("--modes", nargs="+", choices=("fwd", "fwdbwd"), default=["fwd", "fwdbwd"])
    p.add_argument("--providers", nargs="+", default=None,
                   help="subset of reference compile triton cuda (cpu on a CPU run)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--shapes", type=int, default=0,
                   help="only the N largest distinct calls (0: all), largest first")
    p.add_argument("--scale", type=int, default=1, help="divide D, H, W by this (smoke runs)")
    p.add_argument("--compile-shapes", type=int, default=-1,
                   help="torch.compile only the N largest distinct shapes (-1: all)")
    p.add_argument("--compile-dtypes", nargs="+", choices=tuple(DTYPES), default=list(DTYPES))
    p.add_argument("--quick", action="store_true", help="shorter timing (gpu_check)")
    p.add_argument("--smoke", action="store_true",
                   help="CPU dry run: batch 1, shapes / 16, fp32, few repeats, every code path")
    p.add_argument("--precompile", action="store_true", help="only warm Triton's cache, in parallel")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--write-gpu-table", type=Path, default=None, metavar="RESULT_JSON")
    p.add_argument("--passed", nargs="*", default=[], help="backends whose GPU tests passed")
    p.add_argument("--out", type=Path, default=None)
    opts = p.parse_args(argv)

    if opts.write_gpu_table:
        write_gpu_table(opts.write_gpu_table, opts.passed)
        return 0
    if opts.smoke:
        opts.device = opts.device or "cpu"
        opts.batch, opts.scale, opts.quick = 1, 16, True
        if opts.dtypes == list(DTYPES):
            opts.dtypes = ["fp32"]
        if opts.compile_shapes < 0:
            opts.compile_shapes = 1
        opts.compile_dtypes = opts.dtypes
    opts.device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if opts.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU on this machine; use --smoke for a CPU dry run", file=sys.stderr)
        return 2
    if opts.precompile:
        if opts.device != "cuda":
            print("--precompile needs a CUDA GPU", file=sys.stderr)
            return 2
        precompile(opts)
        return 0

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = opts.out or RESULTS_DIR / f"gpu_kernels_{opts.device}{'_smoke' if opts.smoke else ''}_{stamp}.json"
    result = run_sweep(opts, out)
    print_table(result)
    print(f"# results: {out}")
    bad = [r for r in result["rows"] if not r.get("ok")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
