"""The benchmarks know when their numbers are garbage: another process burning a core makes a run
UNRELIABLE (never quiet), the repeats' spread is measured, and the verdict names its reasons."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bench.machine import (OTHER_CPU_LIMIT, SPREAD_LIMIT, MachineMonitor, Timings, interleaved, judge,
                           machine_problems)
from tests.helpers import ROOT

BURN = "import time\nend = time.time() + 120\nwhile time.time() < end:\n    pass\n"


@pytest.fixture
def burner():
    """A process that is not ours burning one core for the length of a test."""
    proc = subprocess.Popen([sys.executable, "-c", BURN], start_new_session=True)
    time.sleep(0.3)
    yield proc
    proc.kill()
    proc.wait()


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
    if record["other_cpu_cores"] <= OTHER_CPU_LIMIT and record["other_cpu_cores_max_window"] <= 0.5:
        assert verdict["quiet"]
    else:  # a CI machine busy with other jobs: unreliable, with that reason
        assert not verdict["quiet"] and "busy machine" in verdict["reasons"][0]


def test_our_own_children_count_as_ours():
    """The CPU time of a child (live or finished) is ours, so it is not counted as another
    process's: our own CPU seconds grow by what the child burned."""
    from bench.machine import _own_cpu_seconds

    before = _own_cpu_seconds()
    subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 1.0\n"
                    "while time.process_time() < end: pass"], check=True)
    assert _own_cpu_seconds() - before >= 0.95


def test_spread_and_stability():
    steady = Timings([1.0, 1.01, 0.99, 1.0, 1.02, 1.0])
    bimodal = Timings([0.7e-3, 8.0e-3, 0.7e-3, 8.0e-3, 0.7e-3, 8.0e-3])
    assert steady.stable and steady.spread <= SPREAD_LIMIT
    assert not bimodal.stable and bimodal.spread > 1
    assert Timings([1.0, 1.2]).spread is None and not Timings([1.0, 1.2]).stable
    assert judge([], ["op x"])["reasons"][0].startswith("spread above 5%")


def test_interleaved_runs_every_side_in_turn():
    order = []
    timed = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1)
    assert order == ["a", "b", "a", "b", "a", "b", "a", "b"]
    assert [len(t.samples) for t in timed.values()] == [3, 3]


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
