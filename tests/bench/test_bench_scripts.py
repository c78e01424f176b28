"""The benchmark scripts: `--help` answers without running anything or writing a file; ordinary
runs write to an untracked folder, never over the committed reference results; the CPU op
benchmark's bandwidth fractions mean what they say; the pytest-benchmark suite is collected by
its own command and not by `pytest tests`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
# every runnable module of the bench package (the harness modules, machine and harness, are libraries)
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if 'if __name__ == "__main__"' in p.read_text())


def snapshot(folder: Path) -> dict:
    """{path: (size, mtime_ns)} of every file below `folder`."""
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and "__pycache__" not in p.parts:
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def test_every_script_is_covered():
    assert {"run", "bench_cpu_op", "bench_network", "report"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_without_running_or_writing(script, tmp_path):
    # (bench/*.py themselves may be edited meanwhile; what --help must not touch is results)
    watched = {"results": BENCH / "results", "reports": ROOT / "reports", "cwd": tmp_path}
    before = {k: snapshot(v) if v.exists() else None for k, v in watched.items()}
    proc = subprocess.run([sys.executable, "-m", f"bench.{script}", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.lower().startswith("usage:"), proc.stdout[:300]
    after = {k: snapshot(v) if v.exists() else None for k, v in watched.items()}
    assert after == before  # nothing written, nothing touched


def test_default_outputs_are_untracked():
    from bench import harness as common

    out = common.default_out("cpu_op")
    assert out.parent == common.LOCAL_RESULTS_DIR
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(out)])
    assert ignored.returncode == 0, f"{out} is not ignored by git"
    report = common.REPORTS_DIR / "2026-01-01T0000Z-cpu-x" / "report.md"
    assert subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(report)]).returncode == 0
    committed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "bench/results"], capture_output=True,
                               text=True).stdout.split()
    assert committed and not any(p.startswith("bench/results/local/") for p in committed)


def test_write_atomic_leaves_no_temporary(tmp_path):
    from bench import harness as common

    target = tmp_path / "sub" / "r.json"
    common.write_json(target, {"a": 1})
    common.write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]


def test_environment_record_has_the_required_fields():
    from bench import harness as common

    env = common.environment("cpu")
    for key in ("device", "driver", "torch", "triton", "cuda", "commit", "allocator_env", "command", "threads",
                "date_utc"):
        assert key in env, key
    assert env["device"].startswith("CPU: ")
    assert env["command"].startswith("python ")


def test_cpu_op_smoke_marks_cache_resident_calls(tmp_path):
    from bench import harness as common

    out = tmp_path / "cpu_op.json"
    proc = subprocess.run([sys.executable, "-m", "bench.bench_cpu_op", "--smoke", "--providers", "reference",
                           "cpu", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert out.with_suffix(".md").exists()
    llc = data["dram_copy"]["last_level_cache_bytes"]
    assert llc == common.last_level_cache_bytes() or common.last_level_cache_bytes() is None
    assert data["dram_copy"]["buffer_bytes"] >= 4 * llc
    assert data["providers"] == ["reference", "cpu"]
    for r in data["results"]:
        for mode, factor in (("fwd", 2.0), ("fwdbwd", 4.5)):
            resident = factor * r["x_bytes"] <= llc
            assert r["cache_resident"][mode] is resident
            for p in data["providers"]:
                frac = r["fraction_of_dram_copy"][p][mode]
                if resident:
                    assert frac is None
                else:
                    expected = r["bandwidth_GBps"][p][mode] * 1e9 / data["dram_copy"]["bytes_per_s"]
                    assert frac == pytest.approx(expected)
    # smoke shapes are tiny: all cache-resident, printed as such and never as a percentage
    assert all(r["cache_resident"]["fwd"] for r in data["results"])
    assert "cache-resident" in proc.stdout
    env = data["environment"]
    assert "python -m bench.bench_cpu_op --smoke" in env["command"] and env["commit"]


@pytest.mark.skipif(not __import__("fusionseg_kernels").extension_available(), reason="the C++ extension is not built")
def test_norm_benchmark_smoke_times_every_call_and_the_epilogue_bound(tmp_path):
    """bench.bench_norm --smoke: the network's 39 norm calls (10 shapes); --epilogue-bound: the 28
    that follow an InceptionDWConv3d, each statistics pass = the norm less the one-pass time."""
    for extra, name in (([], "norm.json"), (["--epilogue-bound"], "bound.json")):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "bench.bench_norm", "--smoke", "--threads", "1", *extra,
                               "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        data = json.loads(out.read_text())
        assert data["verdict"]["quiet"] in (True, False)
        if not extra:
            assert sum(r["calls"] for r in data["rows"]) == 39
            assert set(data["summary"]) == {"forward", "forward_backward"}
        else:
            assert sum(r["calls"] for r in data["rows"]) == 28
            for r in data["rows"]:
                assert r["statistics_pass_s"] == pytest.approx(max(0.0, r["norm_s"] - r["one_pass_s"]))
            assert data["statistics_passes_s"] == pytest.approx(
                sum(r["calls"] * r["statistics_pass_s"] for r in data["rows"]))


def test_benchmark_suite_is_separate_from_tests():
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert cfg["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "bench/benchmarks", "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert any("test_op[" in i and "fwdbwd" in i for i in ids)
    assert any("test_network_step[" in i for i in ids)
    assert all(i.startswith("bench/benchmarks/") for i in ids)


PROFILE_SNIPPET = """
from bench import harness as common
if {quiet}:
    common.quiet_profiler()
import torch
from torch.profiler import ProfilerActivity, profile
x = torch.randn(64, 64)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    x @ x
print("events", len(prof.events()))
"""


@pytest.mark.parametrize("quiet", [True, False])
def test_profiler_noise_is_silenced(quiet):
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", PROFILE_SNIPPET.format(quiet=quiet)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("events ")
    noisy = "profiler_start" in proc.stderr or "gpuGetDeviceCount" in proc.stderr
    assert noisy is (not quiet), proc.stderr[-2000:]  # the unsilenced run shows what is silenced
