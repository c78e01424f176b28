"""The benchmarks know when their numbers are garbage: another process burning a core makes a run
UNRELIABLE (never quiet), the repeats' spread is measured, and the verdict names its reasons."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bench.machine import (MAX_BURSTS, OTHER_CPU_LIMIT, SPREAD_LIMIT, MachineMonitor, Timings, interleaved, judge,
                           machine_problems)
from tests.helpers import ROOT

BURN = "import time\nend = time.time() + 120\nwhile time.time() < end:\n    pass\n"


@pytest.fixture
def burner():
    """A process that is not ours (not a descendant: started through a shell that exits at once)
    burning one core for the length of a test."""
    import os
    import signal

    out = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$0" >/dev/null 2>&1 & echo $!', BURN],
                         capture_output=True, text=True, check=True)
    pid = int(out.stdout.strip())
    time.sleep(0.3)
    yield pid
    os.kill(pid, signal.SIGKILL)


def _monitor(seconds: float) -> dict:
    with MachineMonitor("test", interval=0.25) as monitor:
        time.sleep(seconds)
    return monitor.record


def test_a_burning_process_makes_the_run_unreliable(burner):
    record = _monitor(2.0)
    assert record["other_cpu_cores"] > 0.5      # most of a core, whatever else runs
    problems = machine_problems(record)
    assert problems and problems[0].startswith("busy machine")
    assert not judge([record], [])["quiet"]


def test_without_the_burner_the_run_is_quiet_or_says_why_not():
    record = _monitor(2.0)
    verdict = judge([record], [])
    if record["other_cpu_cores"] <= OTHER_CPU_LIMIT and record["bursts"] <= MAX_BURSTS:
        assert verdict["quiet"]
    else:  # a CI machine busy with other jobs: unreliable, with that reason
        assert not verdict["quiet"] and "busy machine" in verdict["reasons"][0]


def test_our_own_children_count_as_ours_after_they_end():
    """The CPU time of a child is ours while it runs and stays ours after it has ended (before and
    after its parent reaps it): it never moves to "other processes"."""
    from bench.machine import _OwnCpu

    own = _OwnCpu()
    before = own()
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 1.0\n"
                              "while time.process_time() < end: pass"])
    seen = []
    while child.poll() is None:
        seen.append(own())
        time.sleep(0.05)
    after_exit = own()
    assert after_exit - before >= 0.9
    assert all(b >= a for a, b in zip(seen, seen[1:] + [after_exit]))   # never decreases


def test_spread_and_stability():
    steady = Timings([1.0, 1.01, 0.99, 1.0, 1.02, 1.0])
    borderline = Timings([1.0, 1.3, 0.8, 1.0, 1.25, 0.75])
    bimodal = Timings([0.7e-3, 8.0e-3, 0.7e-3, 8.0e-3, 0.7e-3, 8.0e-3])
    assert steady.stable and steady.spread <= SPREAD_LIMIT
    assert not borderline.stable
    assert not bimodal.stable and bimodal.spread > 1
    assert Timings([1.0, 1.2]).spread is None and not Timings([1.0, 1.2]).stable
    reason = judge([], ["op x"])["reasons"][0]
    assert reason.startswith("spread above the limit") and "op x" in reason


def test_interleaved_runs_every_side_in_turn():
    order = []

    def side(name):
        return lambda: (order.append(name), time.sleep(0.012))   # longer than MIN_SAMPLE_S: one call per repeat

    timed = interleaved({"a": side("a"), "b": side("b")}, repeats=3, warmup=1)
    # warm-up and one calibration call each, then A B A B A B
    assert order == ["a", "a", "b", "b", "a", "b", "a", "b", "a", "b"]
    assert [len(t.samples) for t in timed.values()] == [3, 3]


def test_calls_shorter_than_a_sample_are_timed_in_batches():
    calls = []
    timed = interleaved({"tiny": lambda: calls.append(1)}, repeats=4, warmup=0)
    assert len(calls) > 100                     # many calls per repeat
    assert timed["tiny"].median < 1e-4          # the time of one call


@pytest.mark.slow
def test_a_benchmark_run_under_the_burner_says_unreliable_last(burner, tmp_path):
    out = tmp_path / "op.json"
    proc = subprocess.run([sys.executable, "-m", "bench.bench_cpu_op", "--smoke", "--threads", "1", "--providers",
                           "reference", "cpu", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["verdict"]["quiet"] is False
    assert any("busy machine" in r for r in result["verdict"]["reasons"])
    assert proc.stdout.strip().splitlines()[-1].startswith("UNRELIABLE: ")
    assert out.with_suffix(".md").read_text().startswith("**UNRELIABLE**")
