"""``make bench-compare``: the pytest-benchmark suite compared with a stored run, judged only on a
quiet machine.

Waits (up to --wait-quiet seconds) for a quiet machine, runs the suite (bench/benchmarks) with the
given pytest-benchmark options, then reads the machine's state the suite recorded and every
benchmark's spread. Exit status: 0 no regression, 1 a regression (a benchmark's min time more than
the allowed percentage above the baseline's) or a failing run, **3 inconclusive**: the machine was
not quiet or the repeats spread too much, so the comparison neither passes nor fails.

    python -m bench.compare [--wait-quiet 180] -- --benchmark-compare --benchmark-compare-fail=min:10%
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.harness import ROOT
from bench.machine import SPREAD_LIMIT, judge, wait_for_quiet

INCONCLUSIVE = 3
RESULT_JSON = ROOT / "reports" / "benchmark.json"


def verdict_of(result: dict) -> dict:
    """The verdict of a suite run from its JSON: the machine state the suite's conftest recorded
    and every benchmark's spread (IQR / median of its rounds)."""
    machine = (result.get("machine_info") or {}).get("fusionseg", {}).get("machine") or \
        {"unavailable": "the suite recorded no machine state"}
    unstable = []
    for b in result.get("benchmarks", []):
        stats = b.get("stats") or {}
        if stats.get("median") and stats.get("iqr") is not None and stats["iqr"] / stats["median"] > SPREAD_LIMIT:
            unstable.append(b["name"])
    return judge([machine], unstable)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wait-quiet", type=float, default=180, metavar="S",
                   help="wait up to S seconds for a quiet machine first (default 180; 0: do not wait)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="-- then pytest-benchmark options")
    args = p.parse_args(argv)
    extra = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet)
    RESULT_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULT_JSON.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "bench/benchmarks", "--benchmark-only", "-p", "no:cacheprovider",
           f"--benchmark-json={RESULT_JSON}", *extra]
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    try:
        result = json.loads(Path(RESULT_JSON).read_text())
    except (OSError, ValueError):
        print(f"bench-compare: the suite wrote no results (exit status {rc})", file=sys.stderr)
        return rc or 1
    verdict = verdict_of(result)
    if not verdict["quiet"]:
        print(f"bench-compare: INCONCLUSIVE (exit status {INCONCLUSIVE}, neither pass nor fail): "
              f"{'; '.join(verdict['reasons'])}", file=sys.stderr)
        return INCONCLUSIVE
    print(f"bench-compare: {'no regression' if rc == 0 else 'REGRESSION or a failing run'} on a quiet machine "
          f"(pytest exit status {rc})")
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
