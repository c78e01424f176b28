"""Bad input to evaluate, profile, synth and nnunet-plans: the true reason in one sentence, nothing
written where it must not be, no silent wrong figure."""
from __future__ import annotations

import csv
import json
import math
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from fusionseg_kernels.cli import main
from fusionseg_kernels.evaluation import evaluate_folders
from fusionseg_kernels.profiling import profile_command
from tests.nnunet.support import PLANS, write_dataset_folder

pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")


def _mask(path, arr, spacing_xyz=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), pixel=None):
    img = sitk.GetImageFromArray(arr if pixel is None else arr.astype(pixel))
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path), True)


@pytest.fixture
def pair(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    box = np.zeros((10, 16, 16), np.uint8)
    box[3:7, 4:12, 4:12] = 1
    return gt, pred, box


# ------------------------------------------------------------------------------------ evaluate

@pytest.mark.parametrize("what, pred_kw", [("spacing", {"spacing_xyz": (1.0, 1.0, 3.0)}),
                                           ("origin", {"origin": (0.0, 5.0, 0.0)})])
def test_evaluate_warns_when_the_geometry_differs_and_refuses_with_strict(what, pred_kw, pair, tmp_path, capsys):
    gt, pred, box = pair
    _mask(gt / "x.nii.gz", box)
    _mask(pred / "x.nii.gz", box, **pred_kw)
    (row,) = evaluate_folders(pred, gt)
    assert row["dsc"] == 1.0 and what in row["note"] and "ground truth" in row["note"]
    out = tmp_path / "m.csv"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert f"warning: x: the prediction's {what}" in err
    assert what in list(csv.DictReader(out.open()))[0]["note"]
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(tmp_path / "s.csv"), "--strict"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and what in err[0] and not (tmp_path / "s.csv").exists()


def test_evaluate_names_the_true_reason(pair):
    gt, pred, box = pair
    _mask(gt / "two.nii.gz", box * 2)                              # ground truth label 2
    _mask(pred / "two.nii.gz", box)
    _mask(gt / "neg.nii.gz", box)
    _mask(pred / "neg.nii.gz", box.astype(np.int16) * -1, pixel=np.int16)   # prediction label -1
    _mask(gt / "half.nii.gz", box)
    _mask(pred / "half.nii.gz", box.astype(np.float32) * 0.5, pixel=np.float32)   # a float prediction of 0.5
    rows = {r["case"]: r for r in evaluate_folders(pred, gt)}
    assert "ground truth holds labels other than 0 and 1 (2)" in rows["two"]["note"]
    assert "negative labels" in rows["neg"]["note"] and "labels above 1" not in rows["neg"]["note"]
    assert "non-integer values" in rows["half"]["note"] and "empty prediction" not in rows["half"]["note"]
    # FLARE's scores stay FLARE's: only the note changes
    assert rows["neg"]["dsc"] == 0.0 and rows["half"]["dsc"] == 0.0


# ------------------------------------------------------------------------------------ profile

@pytest.mark.parametrize("interval", ["inf", "nan", "0", "-1"])
def test_profile_refuses_non_finite_and_non_positive_intervals(interval, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["profile", "--interval", interval, "--json", str(tmp_path / "p.json"), "--", "true"])
    assert exit_.value.code == 2 and not (tmp_path / "p.json").exists()
    assert "finite positive" in capsys.readouterr().err


def test_a_command_shorter_than_one_interval_is_not_given_a_whole_interval():
    """FLARE's area (samples x nominal interval) is kept as FLARE computes it; beside it the area
    each sample really covers (never past the run's end), and the limit said in the output."""
    r = profile_command([sys.executable, "-c", "x = bytearray(64 << 20)"], interval=5.0, source="rss")
    assert r["samples"] >= 1 and r["max_mem_mb"] > 0
    assert r["auc_mb_s"] == pytest.approx(sum(v for _, v in r["curve"]) * 5.0, abs=0.01)
    assert r["auc_mb_s_measured"] <= r["max_mem_mb"] * r["time_s"] + 1e-9 < r["auc_mb_s"]
    assert "shorter than three intervals" in r["resolution_note"]
    json.dumps(r, allow_nan=False)


def test_profile_of_true_never_reports_an_unmeasured_zero():
    r = profile_command(["true"], interval=0.1, source="rss")
    assert r["max_mem_mb"] is None or r["max_mem_mb"] > 0
    assert r["max_mem_mb"] is not None or "peak is unknown" in r["resolution_note"]


# ------------------------------------------------------------------------------------ synth

def test_synth_refuses_a_huge_count_up_front_without_growing(tmp_path, capsys):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert main(["synth", "-o", str(tmp_path / "d"), "-n", "1000000000", "--size", "4", "8", "8"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "1000000000" in err and "at most" in err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000   # kB
    assert not (tmp_path / "d").exists()


def test_synth_refuses_a_dataset_larger_than_the_free_disk(tmp_path, capsys, monkeypatch):
    import shutil

    from fusionseg_kernels.data import synth

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(synth.shutil, "disk_usage", lambda p: usage._replace(free=10_000))
    assert main(["synth", "-o", str(tmp_path / "d"), "-n", "3", "--size", "16", "32", "32"]) == 1
    assert "free" in capsys.readouterr().err and not (tmp_path / "d").exists()


# ------------------------------------------------------------------------------------ nnunet-plans

@pytest.mark.parametrize("name", ["../../evil", "a/b", "..", ".hidden/x"])
def test_a_plans_name_is_a_name_not_a_path(name, tmp_path, capsys):
    folder = write_dataset_folder(tmp_path / "deep" / "er" / "D")
    assert main(["nnunet-plans", str(folder), "--plans-name", name, "--patch", "16", "32", "32"]) == 1
    assert "not a plain name" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "nnUNetPlans.json"]
    assert not list(tmp_path.rglob("evil.json"))


@pytest.mark.parametrize("broken, field", [
    ([1, 2], "JSON object"),
    ({**PLANS, "configurations": {"3d_fullres": {**PLANS["configurations"]["3d_fullres"], "architecture": [1]}}},
     "architecture"),
    ({**PLANS, "configurations": [1]}, "configurations"),
])
def test_malformed_plans_are_one_sentence_naming_the_file_and_field(broken, field, tmp_path, capsys):
    folder = write_dataset_folder(tmp_path / "D", plans=broken)
    assert main(["nnunet-plans", str(folder), "--patch", "16", "32", "32"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and field in err and "Traceback" not in err
    assert math.isfinite(len(err))
