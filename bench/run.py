"""`make bench`: the benchmark jobs that run on this machine, in order; each writes bench/results/."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
JOBS = [
    ["bench_cpu_op.py"],
    ["bench_network.py", "--device", "cpu", "--quick", "--repeats", "5", "--threads", "2",
     "--keep-freed-memory"],
]


def main() -> int:
    failed = []
    for job in JOBS:
        script = HERE / job[0]
        if not script.exists():
            continue
        print(f"== {' '.join(job)}", flush=True)
        if subprocess.run([sys.executable, str(script), *job[1:]]).returncode != 0:
            failed.append(job[0])
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
