"""The GitHub workflows: valid against the vendored GitHub-workflow schema, and the facts they must
keep: the GPU benchmark runs on the self-hosted RTX 4090 for sm_89 only, scheduled and on demand
(not on push), with ccache keyed on compiler and torch versions, GPU tests, the baseline compare
and the report uploaded; CI runs `make test` on a hosted Ubuntu runner with Python 3.11."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
CI, GPU = WORKFLOWS / "ci.yml", WORKFLOWS / "gpu-bench.yml"


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps_text(job: dict) -> str:
    return "\n".join(str(s.get("run", "")) + " " + str(s.get("uses", "")) + " " + str(s.get("with", ""))
                     for s in job["steps"])


def check_jsonschema() -> list[str]:
    exe = Path(sys.executable).with_name("check-jsonschema")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("check-jsonschema")
    if not found:
        pytest.skip("check-jsonschema is not installed")
    return [found]


@pytest.mark.parametrize("path", [CI, GPU], ids=lambda p: p.name)
def test_workflow_matches_github_schema(path):
    proc = subprocess.run([*check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(GPU.read_text().replace("runs-on:", "runs_on:"))
    proc = subprocess.run([*check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0


def test_gpu_bench_facts():
    wf = load(GPU)
    assert set(wf["on"]) == {"schedule", "workflow_dispatch"}  # not on push or pull requests
    assert wf["on"]["schedule"][0]["cron"]
    (job,) = wf["jobs"].values()
    assert job["runs-on"] == ["self-hosted", "linux", "gpu", "rtx4090"]
    assert str(job["env"]["FUSIONSEG_CUDA_ARCH"]) == "8.9"
    text = steps_text(job)
    assert "make build" in text
    assert re.search(r"pytest -m gpu tests", text)
    assert "make bench-compare" in text and "make bench " in text + " "
    assert "actions/upload-artifact" in text and "reports/" in text
    ccache = next(s for s in job["steps"] if s.get("with", {}).get("path") == ".ccache")
    key = ccache["with"]["key"]
    assert "sm89" in key and "cxx" in key and "torch" in key
    versions = next(s for s in job["steps"] if s.get("id") == "versions")["run"]
    assert "c++ -dumpfullversion" in versions and "torch==" in versions


def test_gpu_bench_compare_fails_on_ten_percent():
    make = (ROOT / "Makefile").read_text()
    rule = make[make.index("bench-compare: build"):]
    rule = rule[:rule.index("\n\n")] if "\n\n" in rule else rule
    assert "--benchmark-compare" in rule and "--benchmark-compare-fail=min:10%" in rule
    assert "bench/benchmarks" in make[make.index("BENCH_SUITE :="):]


def test_ci_facts():
    wf = load(CI)
    assert "push" in wf["on"] and "pull_request" in wf["on"]
    (job,) = wf["jobs"].values()
    assert str(job["runs-on"]).startswith("ubuntu")
    setup = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/setup-python"))
    assert str(setup["with"]["python-version"]) == "3.11"
    assert re.search(r"(^|\s)make test(\s|$)", steps_text(job))
