"""The host-path benchmark: one `fusionseg predict` process per run, its wall time split into
stages that add up (the gap is what no stage holds), host = wall − network; the report's section
shows every figure and marks those without a spread."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import report
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("host_path")
    out = tmp / "host_path.json"
    proc = subprocess.run([sys.executable, "-m", "bench.bench_host_path", "--sizes", "55", "--repeats", "1",
                           "--modes", "fast", "--no-anchor", "--cache-dir", str(tmp / "cache"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text()), tmp


@pytest.mark.slow
def test_stages_add_up_to_the_wall_time(run):
    data, _ = run
    case = data["cases"][0]
    assert case["size_zyx"] == [55, 512, 512] and list(case["sides"]) == ["fast"]
    r = case["sides"]["fast"]["runs"][0]
    stages = r["stages_s"]
    assert set(stages) == {"startup", "imports", "setup", "read", "preprocess", "network", "postprocess", "write",
                           "gap"}
    assert all(v >= 0 for k, v in stages.items() if k != "gap") and stages["gap"] > -0.05
    assert sum(stages.values()) == pytest.approx(r["wall_s"])
    assert r["host_s"] == pytest.approx(r["wall_s"] - stages["network"])
    assert r["read_overlapped_s"] > 0 and r["peak_rss_mb"] > 100


@pytest.mark.slow
def test_the_report_section_marks_a_single_run(run):
    data, tmp = run
    lines, figures = report.host_path_section(data, tmp / "plots", run_quiet=True)
    row = next(line for line in lines if line.startswith("| 512×512×55 | fast |"))
    assert report.UNSTABLE_MARK.strip() in row       # one run: no spread, so no unmarked figure
    assert figures[0].is_file() and figures[0].stat().st_size > 1000
