"""bench/report.py regenerates a report from a stored results.json: plots are created (valid PNGs),
and the tables show what results.json holds."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from bench import report  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LLC = 32 << 20


def env():
    return {"device": "CPU: Test CPU", "driver": None, "torch": "2.14.1", "triton": "3.8.0", "cuda": None,
            "python": "3.11.7", "cpu": "Test CPU", "cpu_count": 2, "cpu_capability": "AVX2", "threads": 2,
            "commit": "0123456789abcdef", "dirty": False, "allocator_env": {}, "date_utc": "2026-12-01T10:00:00+00:00",
            "command": "python -m bench.run"}


def cpu_row(shape, calls, ref, cpu, comp):
    x_bytes = 4
    for s in shape:
        x_bytes *= s
    times = {"reference": ref, "cpu": cpu, "compile": comp}
    dram = 20e9
    bw = {p: {"fwd": 2 * x_bytes / t["fwd"] / 1e9, "fwdbwd": 4.5 * x_bytes / t["fwdbwd"] / 1e9}
          for p, t in times.items()}
    resident = {"fwd": 2 * x_bytes <= LLC, "fwdbwd": 4.5 * x_bytes <= LLC}
    return {"shape": list(shape), "gc": shape[1] // 8, "calls": calls, "dtype": "float32", "x_bytes": x_bytes,
            "x_MB": x_bytes / 1e6, "copy_same_size_s": 0.001, "copy_same_size_GBps": 2 * x_bytes / 0.001 / 1e9,
            "clone_s": 0.002, "cache_resident": resident, "times_s": times, "compile_s": {"fwd": 3.0, "fwdbwd": 4.0},
            "speedup": {p: {m: ref[m] / t[m] for m in t} for p, t in times.items()},
            "bandwidth_GBps": bw,
            "fraction_of_dram_copy": {p: {m: None if resident[m] else b[m] * 1e9 / dram for m in b}
                                      for p, b in bw.items()},
            "cpu_fwd_over_clone": cpu["fwd"] / 0.002}


def make_results():
    rows = [cpu_row((1, 32, 96, 128, 128), 5, {"fwd": 0.116, "fwdbwd": 1.51}, {"fwd": 0.035, "fwdbwd": 0.0877},
                    {"fwd": 0.09, "fwdbwd": 1.2}),
            cpu_row((1, 128, 12, 16, 16), 1, {"fwd": 0.00183, "fwdbwd": 0.0147}, {"fwd": 0.00037, "fwdbwd": 0.002},
                    {"fwd": 0.0015, "fwdbwd": 0.012})]
    cpu_op = {"benchmark": "cpu_op", "environment": env(), "providers": ["reference", "cpu", "compile"],
              "dram_copy": {"buffer_bytes": 4 * LLC, "copy_s": 0.0134, "bytes_per_s": 20e9,
                            "last_level_cache_bytes": LLC},
              "summary": {"calls": 6, "largest_shape": rows[0]["shape"], "largest_cpu_fwd_over_clone": 1.39,
                          "geomean_speedup": {"cpu": {"fwd": 3.11, "fwdbwd": 11.9},
                                              "compile": {"fwd": 1.2, "fwdbwd": 1.25}}},
              "results": rows}
    network = {"network": "DualBranchUNet (released configuration)", "environment": env(),
               "settings": {"patch_inference": [96, 128, 128], "batch_inference": 1, "patch_train": [48, 64, 64],
                            "batch_train": 2, "repeats": 5, "warmup": 1},
               "cases": [{"case": "inference forward", "dtype": "fp32", "shape": [1, 1, 96, 128, 128], "results": {
                   "reference": {"median_s": 5.794, "min_s": 5.627, "speedup_vs_reference": 1.0,
                                 "profile": {"idc_share": 0.186}},
                   "cpu": {"median_s": 5.010, "min_s": 4.886, "speedup_vs_reference": 5.794 / 5.010,
                           "profile": {"idc_share": 0.079}}}},
                   {"case": "training step", "dtype": "fp32", "shape": [2, 1, 48, 64, 64], "results": {
                       "reference": {"median_s": 9.113, "min_s": 8.462, "speedup_vs_reference": 1.0},
                       "cpu": {"median_s": 5.711, "min_s": 5.045, "speedup_vs_reference": 9.113 / 5.711}}}]}
    complexity = [{"network": "dual", "fused": {"patch": [96, 128, 128], "total_params": 8227320,
                                                "total_macs": 184484708352},
                   "published": {"paper_params_m": 8.23, "paper_gmacs": 186.75}}]
    gpu_static = {"kernels": [{"name": "k"}], "predictions": [
        {"backend": "triton", "arch": "sm_89", "dtype": "bf16", "shape": [2, 32, 96, 128, 128], "x_bytes": 201326592,
         "direction": "fwd", "predicted_fraction": 0.83},
        {"backend": "cuda", "arch": "sm_90", "dtype": "bf16", "shape": [2, 16, 96, 128, 128], "x_bytes": 100663296,
         "direction": "fwdbwd", "predicted_fraction": 0.61}]}

    def case(name, size, t, peak):
        curve = [[0.0, 10.0], [0.1, peak], [0.2, peak / 2]]
        return {"case": name, "image_size": size, "time_s": t, "max_mem_mb": peak,
                "auc_mb_s": sum(v for _, v in curve) * 0.1,
                "samples": 3, "interval_s": 0.1, "mean_interval_s": 0.1, "exit_status": 0, "returncode": 0,
                "output_written": True, "device": "CPU: RSS", "source": "rss", "curve": curve}

    def flare(t_scale):
        cases = [case("synth_000", [160, 160, 40], 12.0 * t_scale, 900.0),
                 case("synth_001", [160, 160, 40], 11.0 * t_scale, 950.0)]
        return {"interval_s": 0.1, "cases": cases, "summary": {"cases": 2, "device": "CPU: RSS", "source": "rss"}}

    return {"schema": "fusionseg-bench/1", "environment": env(), "device_kind": "cpu", "total_seconds": 321.0,
            "status": {"op": {"ok": True, "seconds": 100.0}, "gpu_static": {"ok": True, "seconds": 20.0},
                       "network": {"ok": True, "seconds": 150.0}, "complexity": {"ok": True, "seconds": 20.0},
                       "flare_reference": {"ok": True, "seconds": 23.0}},
            "sections": {"op": {"kind": "cpu", "data": cpu_op}, "gpu_static": gpu_static, "network": network,
                         "complexity": complexity, "flare": {"device": "cpu", "sizes": [], "backends": {
                             "reference": flare(1.0), "cpu": flare(0.8)}}}}


def md_table_after(md: str, marker: str) -> list[list[str]]:
    """The first Markdown table after `marker`, as rows of cells (header included)."""
    lines = md[md.index(marker):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if set(line.replace("|", "")) <= {"-"}:
            continue
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.fixture()
def stored(tmp_path):
    results = make_results()
    (tmp_path / "results.json").write_text(json.dumps(results))
    return tmp_path, results


def test_report_regenerated_from_results_json(stored):
    folder, results = stored
    proc = subprocess.run([sys.executable, "-m", "bench.report", str(folder)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("report.md")
    md = (folder / "report.md").read_text()
    for name in ("op_speedup", "op_roofline", "gpu_static_roofline", "network", "flare_curves"):
        png = folder / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC, name
        assert f"(plots/{name}.png)" in md
        import matplotlib.image

        assert matplotlib.image.imread(str(png)).shape[0] > 100
    for title in ("Op benchmark", "Static GPU report", "Network", "Complexity", "FLARE efficiency profile"):
        assert f"## {title}" in md


def test_tables_show_the_stored_numbers(stored):
    folder, results = stored
    md = report.build_markdown(results, folder)[0]
    op = results["sections"]["op"]["data"]
    rows = md_table_after(md, "## Op benchmark")
    assert rows[0][:4] == ["shape (C×D×H×W)", "calls", "x MB", "reference fwd ms"]
    assert len(rows) - 1 == len(op["results"])
    for cells, r in zip(rows[1:], op["results"]):
        assert cells[0] == "×".join(map(str, r["shape"][1:]))
        assert int(cells[1]) == r["calls"]
        assert float(cells[3]) == pytest.approx(r["times_s"]["reference"]["fwd"] * 1e3, abs=0.006)
        cpu_ms, cpu_sp = re.fullmatch(r"([\d.]+) \(([\d.]+)x\)", cells[4]).groups()
        assert float(cpu_ms) == pytest.approx(r["times_s"]["cpu"]["fwd"] * 1e3, abs=0.006)
        assert float(cpu_sp) == pytest.approx(r["speedup"]["cpu"]["fwd"], abs=0.006)
    assert "forward **3.11x**, forward+backward **11.90x**" in md
    # bandwidth: the small call is cache-resident (no fraction), the large one has a fraction
    bw = md_table_after(md, "Bandwidth (bytes read")
    large, small = bw[1], bw[2]
    frac = op["results"][0]["fraction_of_dram_copy"]["cpu"]["fwd"]
    assert f"({frac:.0%})" in " ".join(large)
    assert "cache-resident" in " ".join(small) and "%" not in " ".join(small[3:])
    net = md_table_after(md, "## Network")
    body = {(c[0], c[2]): c for c in net[1:]}
    assert body[("training step", "cpu")][3] == "5.711"
    assert body[("training step", "cpu")][7] == f"{9.113 / 5.711:.2f}x"
    assert body[("inference forward", "reference")][8] == "18.6%"
    cx = md_table_after(md, "## Complexity")
    assert cx[1][:3] == ["dual", "8,227,320", "184.48"]
    static = md_table_after(md, "## Static GPU report")
    assert [c[-1] for c in static[1:]] == ["83%", "61%"]
    flare = md_table_after(md, "**backend `cpu`**")
    assert flare[0][:5] == ["case", "image size", "running time s", "max RSS MB", "total RSS MB·s"]
    assert flare[1][:3] == ["synth_000", "160×160×40", "9.60"]
    ratios = md_table_after(md, "Reference against fused")
    assert ratios[1][:3] == ["synth_000", "cpu", "1.25x"]


def test_report_follows_a_changed_results_json(stored):
    folder, results = stored
    changed = copy.deepcopy(results)
    changed["sections"]["network"]["cases"][1]["results"]["cpu"]["median_s"] = 4.321
    changed["sections"]["gpu_static"] = None
    changed["sections"]["flare"] = None
    (folder / "results.json").write_text(json.dumps(changed))
    assert report.main([str(folder)]) == 0
    md = (folder / "report.md").read_text()
    assert "| training step | fp32 | cpu | 4.321 |" in md
    assert "## Static GPU report" not in md and "## FLARE" not in md
    # (the stored run predates the host-path section)
    assert "Not in this report (skipped or failed, see the job table): gpu_static, flare, host_path." in md


def test_report_cli_errors(tmp_path):
    assert report.main([str(tmp_path)]) == 1  # no results.json
    (tmp_path / "results.json").write_text("{not json")
    assert report.main([str(tmp_path)]) == 1
    with pytest.raises(SystemExit) as e:
        report.main([])
    assert e.value.code == 2


def test_a_disturbed_run_says_so_first_and_marks_every_figure(stored):
    """A run the machine monitor judged not quiet: the report's first line after the title says
    UNRELIABLE with the reason, every speedup carries the mark, the geometric means too; a quiet
    run shows no mark at all."""
    folder, results = stored
    quiet = copy.deepcopy(results)
    quiet["verdict"] = {"quiet": True, "reasons": [], "limits": {"other_cpu_cores": 0.1, "other_cpu_cores_window": 0.5,
                                                                 "steal_cores": 0.05, "spread": 0.05, "window_s": 0.5}}
    busy = copy.deepcopy(quiet)
    busy["verdict"].update(quiet=False, reasons=["op: busy machine: other processes used 95% of a core on average"])
    md_quiet = report.build_markdown(quiet, folder)[0]
    md_busy = report.build_markdown(busy, folder)[0]
    assert "x ⚠" not in md_quiet and "UNRELIABLE" not in md_quiet
    first = md_busy.split("\n")[2]
    assert first.startswith("**UNRELIABLE**: op: busy machine: other processes used 95% of a core")
    op_rows = md_table_after(md_busy, "## Op benchmark")[1:]
    assert op_rows and all(report.UNSTABLE_MARK.strip() in " ".join(r) for r in op_rows)
    assert f"forward+backward **11.90x**{report.UNSTABLE_MARK}" in md_busy
    net_rows = md_table_after(md_busy, "## Network")[1:]
    assert all(r[7].endswith(report.UNSTABLE_MARK.strip()) for r in net_rows)


def test_one_unstable_row_is_marked_in_a_quiet_run(stored):
    """A row whose speedups spread is marked; the geometric mean is marked by its own (bootstrap)
    spread, not by one row's."""
    folder, results = stored
    changed = copy.deepcopy(results)
    changed["sections"]["op"]["data"]["results"][0]["stable"] = False
    md = report.build_markdown(changed, folder)[0]
    rows = md_table_after(md, "## Op benchmark")[1:]
    assert report.UNSTABLE_MARK.strip() in rows[0][0] and report.UNSTABLE_MARK.strip() not in rows[1][0]
    assert f"forward+backward **11.90x**{report.UNSTABLE_MARK}" not in md
    assert "(marked ⚠): 1 of 2" in md
    changed["sections"]["op"]["data"]["summary"]["geomean_speedup_spread"] = {
        "cpu": {"fwd": 0.01, "fwdbwd": 0.2}, "compile": {"fwd": 0.01, "fwdbwd": 0.01}}
    md = report.build_markdown(changed, folder)[0]
    assert f"forward+backward **11.90x**{report.UNSTABLE_MARK} (bootstrap spread 20.0%)" in md
    assert "forward **3.11x** (bootstrap spread 1.0%)" in md


def test_the_readme_sample_is_regenerated_from_a_stored_quiet_run():
    """README.md's sample of make bench is exactly what the stored results.json it names gives, and
    that run was quiet; a run that was not quiet is refused."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(report.README_START) + len(report.README_START)
    sample = readme[start:readme.index(report.README_END)]
    stored = re.search(r"stored as `(bench/results/[^`]+)`", sample).group(1)
    results = json.loads((ROOT / stored).read_text())
    assert results["verdict"]["quiet"] is True
    assert sample == "\n" + report.readme_sample(results, stored)
    busy = copy.deepcopy(results)
    busy["verdict"] = {"quiet": False, "reasons": ["op: busy machine"]}
    with pytest.raises(ValueError, match="not from a quiet run"):
        report.readme_sample(busy, stored)
