"""fusionseg_kernels.profiling and `fusionseg profile`: the sampler's arithmetic (scripted NVML),
start/stop around failing, killed and instant commands, real RSS sampling of a child process, and
FLARE's per-case protocol on two small cases."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fusionseg_kernels import profiling
from fusionseg_kernels.cli import main as cli_main
from fusionseg_kernels.errors import FusionsegError
from fusionseg_kernels.imageio import nifti_dims
from fusionseg_kernels.profiling import (MemorySampler, NvmlSource, ProcessTreeRssSource,
                                         profile_cases, profile_command, profile_memory, summarize)

PY = sys.executable
MiB = 1 << 20
FIELDS = ("time_s", "max_mem_mb", "auc_mb_s", "samples", "interval_s", "mean_interval_s", "device", "source",
          "curve")


class FakeNvml:
    """A scripted stand-in for the pynvml module: used memory (total - free) follows `used_mb`, then
    the script ends (StopIteration ends the sampling)."""

    def __init__(self, used_mb, total_mb=24564, count=1):
        self.used = list(used_mb)
        self.total = total_mb * MiB
        self.count = count
        self.calls = []

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetName(self, handle):
        return b"Fake RTX 4090"

    def nvmlDeviceGetMemoryInfo(self, handle):
        if not self.used:
            raise StopIteration
        used = int(self.used.pop(0) * MiB)
        return SimpleNamespace(total=self.total, free=self.total - used, used=used)


# ----------------------------------------------------------------------------- arithmetic

def test_summarize_is_flares_rectangle_sum():
    times = [0.0, 0.11, 0.23, 0.34]
    values = [500.0, 1500.0, 2500.0, 1000.0]
    s = summarize(times, values, 0.1)
    assert s["max_mem_mb"] == 2500.0
    assert s["auc_mb_s"] == pytest.approx(5500.0 * 0.1)
    assert s["samples"] == 4
    assert s["mean_interval_s"] == pytest.approx(0.34 / 3)
    assert s["auc_mb_s_measured"] == pytest.approx(500 * 0.1 + 1500 * 0.1 + 2500 * 0.1 + 1000 * 0.1)
    empty = summarize([], [], 0.1)
    assert empty == {"max_mem_mb": None, "auc_mb_s": 0.0, "auc_mb_s_measured": 0.0, "samples": 0,
                     "interval_s": 0.1, "mean_interval_s": None}


def test_sampler_on_scripted_nvml_source():
    script = [1000, 4000, 6500, 6000, 1200]
    fake = FakeNvml(script)
    source = NvmlSource(0, nvml=fake)
    assert "Fake RTX 4090" in source.device and source.source == "nvml"
    sampler = MemorySampler(source, interval=0.02).start()
    sampler.join(timeout=30)  # the script ends by itself
    result = sampler.stop()
    source.close()
    assert [v for _, v in result["curve"]] == pytest.approx(script)  # total - free, in MB
    assert result["samples"] == 5
    assert result["max_mem_mb"] == pytest.approx(6500)
    assert result["auc_mb_s"] == pytest.approx(sum(script) * 0.02)  # nominal interval, not measured
    times = [t for t, _ in result["curve"]]
    assert times == sorted(times)
    assert result["mean_interval_s"] == pytest.approx((times[-1] - times[0]) / 4, abs=1e-5)
    assert result["mean_interval_s"] > 0
    assert fake.calls == ["init", "shutdown"]


def test_nvml_source_rejects_missing_device_and_shuts_down():
    fake = FakeNvml([100], count=1)
    with pytest.raises(FusionsegError, match="index 3"):
        NvmlSource(3, nvml=fake)
    assert fake.calls == ["init", "shutdown"]


def test_sampler_keeps_samples_when_the_source_fails():
    values = iter([10.0, 20.0])

    class Failing(profiling.MemorySource):
        def read_mb(self):
            try:
                return next(values)
            except StopIteration:
                raise RuntimeError("driver went away") from None

    sampler = MemorySampler(Failing(), interval=0.01).start()
    sampler.join(timeout=30)
    result = sampler.stop()
    assert result["samples"] == 2 and result["max_mem_mb"] == 20.0
    assert "driver went away" in result["sampler_error"]


def test_interval_must_be_positive():
    with pytest.raises(FusionsegError):
        MemorySampler(ProcessTreeRssSource(), interval=0)


# ----------------------------------------------------------------------------- commands

def test_failing_command_yields_report_and_status():
    r = profile_command([PY, "-c", "import sys; sys.exit(3)"], interval=0.05, source="rss")
    assert r["returncode"] == 3 and r["exit_status"] == 3
    assert all(k in r for k in FIELDS)
    assert r["samples"] == len(r["curve"]) >= 1  # the first sample is taken at start
    assert r["time_s"] > 0


def test_killed_command_yields_report_and_signal_status():
    proc_code = "import time; print('ready', flush=True); time.sleep(60)"
    done = {}

    def run():
        done["r"] = profile_command([PY, "-c", proc_code], interval=0.05, source="rss")

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 60
    pid = None
    while pid is None and time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-f", "-P", str(os.getpid()), "time.sleep\\(60\\)"],
                             capture_output=True, text=True).stdout.split()
        pid = int(out[0]) if out else None
        time.sleep(0.05)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    t.join(timeout=60)
    r = done["r"]
    assert r["returncode"] == -signal.SIGKILL and r["exit_status"] == 128 + signal.SIGKILL
    assert all(k in r for k in FIELDS)


def test_instant_command_still_reports():
    """A command that ends before (or right after) the first sample: a full profile, no 0 MB that was
    never measured, and the resolution's limit said."""
    r = profile_command(["true"], interval=5.0, source="rss")
    assert r["returncode"] == 0
    assert all(k in r for k in FIELDS)
    assert r["samples"] in (0, 1) and r["samples"] == len(r["curve"])
    assert r["auc_mb_s"] == pytest.approx(sum(v for _, v in r["curve"]) * 5.0)
    assert r["max_mem_mb"] is None or r["max_mem_mb"] > 0
    assert "peak is unknown" in r["resolution_note"] if r["samples"] == 0 else "shorter than" in r["resolution_note"]


def test_context_manager_reports_when_the_block_raises():
    prof = profile_memory(interval=0.05, source="rss")
    with pytest.raises(ZeroDivisionError):
        with prof:
            _ = 1 / 0
    assert prof.result is not None and all(k in prof.result for k in FIELDS)
    assert prof.result["source"] == "rss" and "RSS" in prof.result["device"]


def test_rss_sampling_sees_a_child_allocation():
    # 200 MB, touched, then held for a second. No comment inside the code: the shell variant
    # below joins its lines with "; ", where a comment would swallow the sleep.
    code = textwrap.dedent("""
        import time, numpy
        a = numpy.ones(200 * 2**20 // 8)
        time.sleep(1.0)
    """)
    idle = profile_command([PY, "-c", "import time, numpy; time.sleep(1.0)"], interval=0.05, source="rss")
    big = profile_command([PY, "-c", code], interval=0.05, source="rss")
    assert big["returncode"] == 0
    assert big["max_mem_mb"] >= 200
    assert big["max_mem_mb"] - idle["max_mem_mb"] >= 150
    # The process tree counts: the same allocation in a grandchild, behind a shell.
    tree = profile_command(["sh", "-c", f'"{PY}" -c "{code.strip().replace(chr(10), "; ")}"'],
                           interval=0.05, source="rss")
    assert tree["returncode"] == 0 and tree["max_mem_mb"] >= 200


def test_cli_passes_status_through_and_writes_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    rc = cli_main(["profile", "--json", str(out), "--interval", "0.05", "--source", "rss", "--",
                   PY, "-c", "import sys; sys.exit(5)"])
    assert rc == 5
    data = json.loads(out.read_text())
    assert data["exit_status"] == 5 and data["command"][0] == PY
    assert all(k in data for k in FIELDS)
    assert "exit status 5" in capsys.readouterr().err


def test_cli_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["profile"])
    assert e.value.code == 2
    assert cli_main(["profile", "--", str(tmp_path / "no-such-program")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fusionseg profile: error: cannot start")
    (tmp_path / "empty").mkdir()
    assert cli_main(["profile", "--per-case", "-i", str(tmp_path / "empty"), "-o", str(tmp_path / "o"),
                     "--", "echo", "{input}"]) == 1
    assert "no <case>_0000.nii.gz" in capsys.readouterr().err


# ----------------------------------------------------------------------------- per case

def write_case(folder: Path, name: str, shape_xyz):
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros(shape_xyz, dtype=np.int16), np.diag([0.8, 0.8, 2.5, 1.0]))
    path = folder / f"{name}_0000.nii.gz"
    nib.save(img, str(path))
    return path


# Reads the only image of {input}, writes a same-sized mask <case>.nii.gz to {output}; fails if the
# input folder holds anything else (FLARE gives one case per run).
FAKE_PREDICT = textwrap.dedent("""
    import os, sys
    import nibabel as nib, numpy as np
    src, dst = sys.argv[1], sys.argv[2]
    files = os.listdir(src)
    assert len(files) == 1 and files[0].endswith("_0000.nii.gz"), files
    img = nib.load(os.path.join(src, files[0]))
    mask = (np.asarray(img.dataobj) > 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, img.affine), os.path.join(dst, files[0].replace("_0000.nii.gz", ".nii.gz")))
""")


def test_nifti_dims_reads_header(tmp_path):
    p = write_case(tmp_path, "c", (12, 10, 7))
    assert nifti_dims(p) == [12, 10, 7]
    (tmp_path / "x_0000.nii.gz").write_bytes(b"not an image")
    assert nifti_dims(tmp_path / "x_0000.nii.gz") is None


def test_per_case_protocol_on_two_cases(tmp_path, capsys):
    cases = tmp_path / "in"
    cases.mkdir()
    write_case(cases, "FLARE_001", (20, 16, 9))
    write_case(cases, "FLARE_002", (24, 16, 5))
    (cases / "notes.txt").write_text("not a case")
    script = tmp_path / "predict.py"
    script.write_text(FAKE_PREDICT)
    out = tmp_path / "out"
    report = tmp_path / "report" / "flare.json"
    rc = cli_main(["profile", "--per-case", "-i", str(cases), "-o", str(out), "--json", str(report),
                   "--interval", "0.05", "--source", "rss", "--", PY, str(script), "{input}", "{output}"])
    assert rc == 0
    data = json.loads(report.read_text())
    assert [c["case"] for c in data["cases"]] == ["FLARE_001", "FLARE_002"]
    assert [c["image_size"] for c in data["cases"]] == [[20, 16, 9], [24, 16, 5]]
    assert all(c["output_written"] and c["exit_status"] == 0 for c in data["cases"])
    assert (out / "FLARE_001.nii.gz").exists() and (out / "FLARE_002.nii.gz").exists()
    assert all(c["samples"] == len(c["curve"]) and c["max_mem_mb"] > 0 for c in data["cases"])
    rows = list(csv.reader(report.with_suffix(".csv").open()))
    assert rows[0][:5] == ["case", "image size", "running time s", "max RSS MB", "total RSS MB·s"]
    assert [r[:2] for r in rows[1:]] == [["FLARE_001", "20×16×9"], ["FLARE_002", "24×16×5"]]
    assert float(rows[1][2]) == pytest.approx(data["cases"][0]["time_s"], abs=0.006)
    md = report.with_suffix(".md").read_text()
    assert "| FLARE_002 | 24×16×5 |" in md
    curves = list(csv.DictReader(report.with_name("flare_curves.csv").open()))
    assert {r["case"] for r in curves} == {"FLARE_001", "FLARE_002"}
    assert len(curves) == sum(c["samples"] for c in data["cases"])


def test_per_case_failure_is_reported_and_passed_through(tmp_path):
    cases = tmp_path / "in"
    cases.mkdir()
    write_case(cases, "a", (4, 4, 4))
    write_case(cases, "b", (4, 4, 4))
    result = profile_cases([PY, "-c", "import sys, os; sys.exit(0 if os.listdir(sys.argv[1])[0].startswith('a') "
                            "else 7)", "{input}"], cases, tmp_path / "out", interval=0.05, source="rss")
    assert [c["exit_status"] for c in result["cases"]] == [0, 7]
    assert result["summary"]["failed"] == 1
    assert not result["cases"][0]["output_written"]
    with pytest.raises(FusionsegError, match="{input}"):
        profile_cases(["echo", "x"], cases, tmp_path / "out")


def test_per_case_protocol_with_fusionseg_predict(tmp_path):
    """The protocol around the real `fusionseg predict` (a tiny random-weight model, two synthetic
    cases): one run per case, a mask per case, a full profile per case."""
    pytest.importorskip("fusionseg_kernels.inference")
    synth = pytest.importorskip("fusionseg_kernels.data.synth")
    import torch

    from fusionseg_kernels.inference import create_model_folder, released_plans
    from fusionseg_kernels.models import DualBranchUNet

    features, strides = (8, 16, 16, 32), ((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2))
    torch.manual_seed(0)
    net = DualBranchUNet(features_per_stage=features, strides=strides).eval()
    model = create_model_folder(tmp_path / "model", net,
                                released_plans(patch_size=(16, 32, 32), features_per_stage=features, strides=strides))
    names = synth.write_dataset(tmp_path / "ds", n=2, size=(12, 40, 40), spacing=(5.0, 1.6, 1.6), seed=0)
    out = tmp_path / "out"
    result = profile_cases([PY, "-m", "fusionseg_kernels.cli", "predict", "-i", "{input}", "-o", "{output}",
                            "-m", str(model), "--device", "cpu", "--backend", "cpu", "--threads", "1", "--quiet"],
                           tmp_path / "ds" / "imagesTr", out, interval=0.05, source="rss")
    assert [c["case"] for c in result["cases"]] == sorted(names)
    for c in result["cases"]:
        assert c["exit_status"] == 0 and c["output_written"]
        assert c["image_size"] == [40, 40, 12]  # NIfTI order x, y, z
        assert c["max_mem_mb"] > 100 and c["samples"] == len(c["curve"]) > 1
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.nii.gz" for n in names)
