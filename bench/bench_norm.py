"""InstanceNorm + LeakyReLU on the CPU: the fused op against F.instance_norm then F.leaky_relu, on the
released network's 39 norm calls at its 96x128x128 patch (10 distinct shapes, weighted by their
call counts in the geometric mean), float32.

Two measurements per shape, each side interleaved with the other, medians of the repeats:
- forward: in inference form on both sides (no_grad; the fused op in place, as the network calls
  it; PyTorch's instance_norm then an in-place leaky_relu_, as nn.LeakyReLU(inplace=True));
- forward + backward: the out-of-place op and autograd on both sides (the training form).

Usage:
    python -m bench.bench_norm --threads 1 --keep-freed-memory
    python -m bench.bench_norm --smoke            # seconds: the shapes divided by 8
    python -m bench.bench_norm --threads 1 --keep-freed-memory --epilogue-bound
Results: --out FILE, by default bench/results/local/norm_cpu_<UTC time>.json.
"""
from __future__ import annotations

import argparse
import collections
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.harness import default_out, environment, geomean, reexec_keeping_freed_memory, write_json
from bench.machine import MachineMonitor, geomean_spread, interleaved, judge, paired_ratios


def network_norm_calls(scale: int = 1, only=None) -> list[tuple[tuple[int, ...], float, int]]:
    """[(x shape, negative_slope (1.0: no activation), calls)] of the released DualBranchUNet's
    InstanceNorm3d calls at 96x128x128, traced on the meta device; `scale` divides the sizes;
    `only(conv_norm_act)` keeps the calls of the layers it accepts."""
    from fusionseg_kernels.models import DualBranchUNet
    from fusionseg_kernels.models.blocks import ConvNormAct

    with torch.device("meta"):
        model = DualBranchUNet(backend="reference").eval()
    calls: collections.Counter = collections.Counter()

    def record(module, args, _out):
        slope = module.act.negative_slope if module.act is not None else 1.0
        calls[(tuple(args[0].shape), slope)] += 1

    for m in model.modules():
        if isinstance(m, ConvNormAct) and (only is None or only(m)):
            m.norm.register_forward_hook(lambda norm, a, o, cna=m: record(cna, a, o))
    with torch.no_grad():
        model(torch.empty(1, 1, 96, 128, 128, device="meta"))
    out = []
    for (shape, slope), n in sorted(calls.items(), key=lambda kv: -math.prod(kv[0][0])):
        if scale > 1:
            shape = shape[:2] + tuple(max(2, s // scale) for s in shape[2:])
        out.append((shape, slope, n))
    return out


def time_shape(shape, slope, repeats, gen):
    """(forward timings, forward+backward timings), each {"torch": Timings, "fused": Timings}."""
    from fusionseg_kernels.ops.instance_norm_act import instance_norm_leaky_relu, instance_norm_leaky_relu_

    x = torch.randn(shape, generator=gen)
    grad = torch.randn(shape, generator=gen)
    work = x.clone()
    xg = x.clone().requires_grad_()

    def fused_forward():
        work.copy_(x)
        with torch.no_grad():
            instance_norm_leaky_relu_(work, negative_slope=slope, backend="cpu")

    def torch_forward():
        work.copy_(x)   # the same copy on both sides
        with torch.no_grad():
            y = F.instance_norm(work)
            if slope != 1.0:
                F.leaky_relu_(y, slope)

    def fused_training():
        instance_norm_leaky_relu(xg, negative_slope=slope, backend="cpu").backward(grad)
        xg.grad = None

    def torch_training():
        y = F.instance_norm(xg)
        (F.leaky_relu(y, slope) if slope != 1.0 else y).backward(grad)
        xg.grad = None

    fwd = interleaved({"torch": torch_forward, "fused": fused_forward}, repeats)
    train = interleaved({"torch": torch_training, "fused": fused_training}, repeats)
    return fwd, train


def time_statistics_pass(shape, slope, repeats, gen) -> dict:
    """The fused in-place norm (two passes) against an in-place LeakyReLU on the same tensor (one
    read and one write: the apply pass's traffic), interleaved, each less the copy that restores
    the input; the difference is the statistics pass."""
    from fusionseg_kernels.ops.instance_norm_act import instance_norm_leaky_relu_

    x = torch.randn(shape, generator=gen)
    work = x.clone()

    def norm():
        work.copy_(x)
        with torch.no_grad():
            instance_norm_leaky_relu_(work, negative_slope=slope, backend="cpu")

    def one_pass():
        work.copy_(x)   # the same copy on both sides
        F.leaky_relu_(work, 0.01)

    t = interleaved({"norm": norm, "apply_pass_traffic": one_pass}, repeats)
    copy = interleaved({"copy": lambda: work.copy_(x)}, repeats)["copy"].median
    norm_s, pass_s = t["norm"].median - copy, t["apply_pass_traffic"].median - copy
    return {"shape": list(shape), "negative_slope": slope, "norm_s": norm_s, "one_pass_s": pass_s,
            "statistics_pass_s": max(0.0, norm_s - pass_s), "norm": t["norm"].as_dict(),
            "one_pass": t["apply_pass_traffic"].as_dict()}


def epilogue_bound(repeats: int, gen, scale: int = 1) -> dict:
    """What statistics from InceptionDWConv3d's epilogue could save at most: the statistics passes
    (`time_statistics_pass`) of the norms that follow an InceptionDWConv3d."""
    rows, total_norm, total_stats = [], 0.0, 0.0
    for shape, slope, n in network_norm_calls(scale, only=lambda layer: layer.is_inception):
        row = dict(time_statistics_pass(shape, slope, repeats, gen), calls=n)
        rows.append(row)
        total_norm += n * row["norm_s"]
        total_stats += n * row["statistics_pass_s"]
        print(f"{str(tuple(shape)):<24} x{n}  norm {1e3 * row['norm_s']:7.2f} ms, one pass "
              f"{1e3 * row['one_pass_s']:7.2f} ms, statistics pass ~{1e3 * row['statistics_pass_s']:6.2f} ms",
              flush=True)
    print(f"{sum(r['calls'] for r in rows)} norms after an InceptionDWConv3d: {total_norm:.3f} s in the fused "
          f"norm, of which {total_stats:.3f} s in statistics passes (the most epilogue statistics could save)")
    return {"rows": rows, "norm_s": total_norm, "statistics_passes_s": total_stats}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--smoke", action="store_true", help="the shapes divided by 8, 2 repeats")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="re-run with glibc keeping freed memory (as the network benchmark)")
    p.add_argument("--epilogue-bound", action="store_true",
                   help="instead: the time of the statistics passes of the norms that follow an InceptionDWConv3d "
                        "(what statistics from the op's epilogue could save at most)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.repeats = 2
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.keep_freed_memory:
        reexec_keeping_freed_memory("bench.bench_norm")
    if args.threads:
        torch.set_num_threads(args.threads)
    from fusionseg_kernels import extension_available

    if not extension_available():
        print("the C++ extension is not built: nothing to compare", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(0)
    if args.epilogue_bound:
        with MachineMonitor(f"norm epilogue bound, {torch.get_num_threads()} threads") as monitor:
            bound = epilogue_bound(args.repeats, gen, 8 if args.smoke else 1)
        result = {"benchmark": "instance_norm_leaky_relu epilogue bound", "environment": environment("cpu"),
                  "settings": {"threads": torch.get_num_threads(), "repeats": args.repeats, "dtype": "float32"},
                  **bound, "machine": monitor.record, "verdict": judge([monitor.record], [])}
        if not result["verdict"]["quiet"]:
            print(f"UNRELIABLE: {'; '.join(result['verdict']['reasons'])}")
        out = args.out or default_out("norm_epilogue_bound_cpu")
        write_json(out, result)
        print(f"wrote {out}")
        return 0
    calls = network_norm_calls(8 if args.smoke else 1)
    rows = []
    with MachineMonitor(f"norm, {torch.get_num_threads()} threads") as monitor:
        for shape, slope, n in calls:
            fwd, train = time_shape(shape, slope, args.repeats, gen)
            row = {"shape": list(shape), "negative_slope": slope, "calls": n}
            for name, t in (("forward", fwd), ("forward_backward", train)):
                ratios = paired_ratios(t["torch"], t["fused"])
                row[name] = {"torch": t["torch"].as_dict(), "fused": t["fused"].as_dict(),
                             "speedup": t["torch"].median / t["fused"].median, "speedup_spread": ratios.spread,
                             "stable": ratios.stable}
            rows.append(row)
            print(f"{str(tuple(shape)):<24} x{n}  forward {1e3 * fwd['torch'].median:8.2f} -> "
                  f"{1e3 * fwd['fused'].median:7.2f} ms ({row['forward']['speedup']:.2f}x)   fwd+bwd "
                  f"{1e3 * train['torch'].median:8.2f} -> {1e3 * train['fused'].median:7.2f} ms "
                  f"({row['forward_backward']['speedup']:.2f}x)", flush=True)
    weights = [r["calls"] for r in rows]
    summary = {}
    for name in ("forward", "forward_backward"):
        per_repeat = [paired_ratios(_timings(r[name]["torch"]), _timings(r[name]["fused"])).samples for r in rows]
        summary[name] = {"geomean_speedup": geomean([r[name]["speedup"] for r in rows], weights),
                         "geomean_spread": geomean_spread(per_repeat, weights)}
    unstable = [f"{tuple(r['shape'])} {k}" for r in rows for k in ("forward", "forward_backward")
                if not r[k]["stable"]]
    result = {"benchmark": "instance_norm_leaky_relu", "environment": environment("cpu"),
              "settings": {"threads": torch.get_num_threads(), "repeats": args.repeats, "smoke": args.smoke,
                           "dtype": "float32"},
              "rows": rows, "summary": summary, "machine": monitor.record,
              "verdict": judge([monitor.record], unstable)}
    print(f"geometric mean over the {sum(weights)} calls: forward {summary['forward']['geomean_speedup']:.2f}x, "
          f"forward+backward {summary['forward_backward']['geomean_speedup']:.2f}x")
    if not result["verdict"]["quiet"]:
        print(f"UNRELIABLE: {'; '.join(result['verdict']['reasons'])}")
    out = args.out or default_out("norm_cpu")
    write_json(out, result)
    print(f"wrote {out}")
    return 0


def _timings(d: dict):
    from bench.machine import Timings

    return Timings(list(d["times_s"]))


if __name__ == "__main__":
    sys.exit(main())
