"""How stable are CPU timings with two threads, and what makes them stable?

On a small VM a parallel region sometimes waits for the second thread to wake (the same call takes
0.7 ms or 8 ms). This times a few of the network's InceptionDWConv3d calls (fused forward and the
reference forward), each setting in fresh processes, and prints min, median, 90th percentile and
spread per setting:

  default          OpenMP as torch starts it
  active           OMP_WAIT_POLICY=ACTIVE (idle threads spin instead of sleeping)
  passive          OMP_WAIT_POLICY=PASSIVE (idle threads sleep at once)
  spin             GOMP_SPINCOUNT=10000000 (spin longer before sleeping)
  bind             OMP_PROC_BIND=close OMP_PLACES=cores (threads pinned, one per core)
  active+bind      both
  1 thread         torch.set_num_threads(1), for comparison

    python -m bench.thread_stability [--repeats 40] [--processes 3] [--json FILE]

Run it on a quiet machine (nothing else running): its point is the machine's own behaviour.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

SETTINGS = {
    "default": {},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin": {"GOMP_SPINCOUNT": "10000000"},
    "bind": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
    "active+bind": {"OMP_WAIT_POLICY": "ACTIVE", "OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
    "1 thread": {},
}
CALLS = ((1, 64, 24, 32, 32), 8), ((1, 32, 48, 64, 64), 4)

WORKER = """
import json, sys, time, torch
import fusionseg_kernels as fk
from fusionseg_kernels.testing import make_input, make_op_args
threads, repeats = int(sys.argv[1]), int(sys.argv[2])
calls = json.loads(sys.argv[3])
torch.set_num_threads(threads)
out = {}
for shape, gc in calls:
    x = make_input(shape, dtype=torch.float32)
    args = make_op_args(shape[1], gc, dtype=torch.float32)
    for backend in ("cpu", "reference"):
        fn = lambda: fk.inception_dwconv3d(x, *args, backend=backend)
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
        out[f"{backend} {'x'.join(map(str, shape))}"] = times
print(json.dumps(out))
"""


def summary(times):
    q = statistics.quantiles(times, n=10, method="inclusive")
    quart = statistics.quantiles(times, n=4, method="inclusive")
    med = statistics.median(times)
    return {"min_ms": 1e3 * min(times), "median_ms": 1e3 * med, "p90_ms": 1e3 * q[8],
            "spread": (quart[2] - quart[0]) / med}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--json", help="write every measurement here")
    args = p.parse_args(argv)
    calls = [[list(shape), gc] for shape, gc in CALLS]
    results = {}
    # settings interleaved across processes: a drift of the machine hits them alike
    for _ in range(args.processes):
        for name in args.settings:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
            env.update(SETTINGS[name])
            threads = 1 if name == "1 thread" else 2
            out = subprocess.run([sys.executable, "-c", WORKER, str(threads), str(args.repeats), json.dumps(calls)],
                                 env=env, capture_output=True, text=True, check=True)
            for quantity, times in json.loads(out.stdout).items():
                results.setdefault(name, {}).setdefault(quantity, []).append(times)
    print(f"{'setting':<13} {'quantity':<22} per process: min / median / p90 ms, spread")
    for name, quantities in results.items():
        for quantity, runs in quantities.items():
            cells = "   ".join(f"{s['min_ms']:.2f}/{s['median_ms']:.2f}/{s['p90_ms']:.2f} {s['spread']:.0%}"
                               for s in map(summary, runs))
            print(f"{name:<13} {quantity:<22} {cells}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": SETTINGS, "calls": calls, "repeats": args.repeats, "results": results}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
