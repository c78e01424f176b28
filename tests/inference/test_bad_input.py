"""Bad input to `fusionseg predict` never destroys data and never gives a silent wrong answer:
clashing inputs and outputs are refused before anything is written, odd geometry round-trips or is
refused in one sentence, and every refusal is one line with a non-zero exit."""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from fusionseg_kernels.cli import main
from tests.inference.predict_support import ct_volume, make_model_folder, write_volume

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("model_bad"))


def predict(argv, capsys):
    rc = main(["predict", *map(str, argv), "--device", "cpu", "--quiet"])
    return rc, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------ data loss

@pytest.mark.parametrize("names", [("a.nii.gz", "a_0000.nii.gz"), ("b_0000.mha", "b_0000.mhd")])
def test_two_inputs_with_one_output_name_are_refused_before_anything_is_written(names, model, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for name in names:
        write_volume(inp / name, ct_volume((8, 20, 20)))
    rc, err = predict(["-i", inp, "-o", out, "-m", model], capsys)
    assert rc == 1 and len(err) == 1
    assert all(n in err[0] for n in names) and "same mask" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("output", ["same", "same/."])
def test_an_output_folder_that_is_the_input_folder_is_refused(output, model, tmp_path, capsys):
    inp = tmp_path / "same"
    inp.mkdir()
    write_volume(inp / "ct.nii.gz", ct_volume((8, 20, 20)))  # no _0000: its mask would be ct.nii.gz
    before = snapshot(inp)
    rc, err = predict(["-i", inp, "-o", tmp_path / output, "-m", model], capsys)
    assert rc == 1 and len(err) == 1 and "overwrite" in err[0] and "ct.nii.gz" in err[0]
    assert snapshot(inp) == before


def test_a_mask_name_equal_to_an_input_file_is_refused_for_a_single_file(model, tmp_path, capsys):
    write_volume(tmp_path / "scan.nii.gz", ct_volume((8, 20, 20)))
    before = snapshot(tmp_path)
    rc, err = predict(["-i", tmp_path / "scan.nii.gz", "-o", tmp_path, "-m", model], capsys)
    assert rc == 1 and len(err) == 1 and "overwrite" in err[0]
    assert snapshot(tmp_path) == before


def test_a_failed_run_leaves_no_output_folder(model, tmp_path, capsys):
    write_volume(tmp_path / "c_0000.nii.gz", ct_volume((8, 20, 20)))
    for argv in (["-m", tmp_path / "no_model"], ["-m", model, "-f", "7"], ["-m", tmp_path / "c_0000.nii.gz"]):
        out = tmp_path / "out"
        rc, err = predict(["-i", tmp_path / "c_0000.nii.gz", "-o", out, *argv], capsys)
        assert rc == 1 and len(err) == 1
        assert not out.exists(), argv


# ------------------------------------------------------------------------------------ wrong answers

def test_non_finite_voxels_are_refused_with_their_count_or_replaced_on_request(model, tmp_path, capsys):
    image = ct_volume((8, 20, 20)).astype(np.float32)
    image[2, 3:5, 4] = np.nan
    image[5, 0, 0] = np.inf
    write_volume(tmp_path / "nan_0000.nii.gz", image)
    rc, err = predict(["-i", tmp_path / "nan_0000.nii.gz", "-o", tmp_path / "out", "-m", model], capsys)
    assert rc == 1 and any("3 voxels that are NaN or infinite" in line for line in err)
    assert not (tmp_path / "out" / "nan.nii.gz").exists()
    rc, err = predict(["-i", tmp_path / "nan_0000.nii.gz", "-o", tmp_path / "out", "-m", model,
                       "--replace-non-finite", "-1024"], capsys)
    assert rc == 0 and (tmp_path / "out" / "nan.nii.gz").exists()


def _write_mha_with_spacing(path: Path, spacing_x: str) -> None:
    img = sitk.GetImageFromArray(ct_volume((8, 20, 20)))
    img.SetSpacing((1.6, 2.0, 3.0))
    sitk.WriteImage(img, str(path), False)
    data = re.sub(rb"ElementSpacing = [^\n]*", f"ElementSpacing = {spacing_x} 2 3".encode(), path.read_bytes())
    path.write_bytes(data)


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_a_negative_spacing_round_trips_as_itk_reads_it(mode, model, tmp_path, capsys):
    """A header spacing of -1.6 is ITK's spacing 1.6 along a flipped axis: the mask has exactly the
    image's geometry as ITK reads both."""
    _write_mha_with_spacing(tmp_path / "neg_0000.mha", "-1.6")
    rc, err = predict(["-i", tmp_path / "neg_0000.mha", "-o", tmp_path / "out", "-m", model, "--mode", mode],
                      capsys)
    assert rc == 0, err
    image, mask = sitk.ReadImage(str(tmp_path / "neg_0000.mha")), sitk.ReadImage(str(tmp_path / "out" / "neg.mha"))
    assert mask.GetSpacing() == image.GetSpacing() and mask.GetDirection() == image.GetDirection()
    assert mask.GetOrigin() == image.GetOrigin() and mask.GetSize() == image.GetSize()


@pytest.mark.parametrize("spacing, words", [("1e-6", "spacing"), ("1e6", "spacing"), ("0", "spacing")])
def test_an_extreme_spacing_is_one_sentence_with_the_allowed_range(spacing, words, model, tmp_path, capsys):
    _write_mha_with_spacing(tmp_path / "odd_0000.mha", spacing)
    rc, err = predict(["-i", tmp_path / "odd_0000.mha", "-o", tmp_path / "out", "-m", model], capsys)
    assert rc == 1
    line = next(ln for ln in err if "odd_0000.mha" in ln)
    assert words in line and "between" in line and "Traceback" not in "\n".join(err)


def test_a_nifti_with_an_empty_dimension_is_refused(model, tmp_path, capsys):
    path = tmp_path / "empty_0000.nii"
    write_volume(path, ct_volume((8, 20, 20)))
    data = bytearray(path.read_bytes())
    data[44:46] = struct.pack("<h", 0)           # dim[2] = 0
    path.write_bytes(bytes(data))
    rc, err = predict(["-i", path, "-o", tmp_path / "out", "-m", model], capsys)
    assert rc == 1 and any("empty" in line and "dim[2] = 0" in line for line in err)
    assert not (tmp_path / "out" / "empty.nii").exists()


# ------------------------------------------------------------------------------------ clear messages

def test_an_uncompressed_nifti_named_nii_gz_is_read(model, tmp_path, capsys):
    write_volume(tmp_path / "plain.nii", ct_volume((8, 20, 20)))
    (tmp_path / "plain.nii").rename(tmp_path / "plain_0000.nii.gz")
    rc, err = predict(["-i", tmp_path / "plain_0000.nii.gz", "-o", tmp_path / "out", "-m", model], capsys)
    assert rc == 0, err
    assert sitk.ReadImage(str(tmp_path / "out" / "plain.nii.gz")).GetSize() == (20, 20, 8)


def test_a_truncated_metaimage_pair_names_its_voxel_file(model, tmp_path, capsys):
    sitk.WriteImage(sitk.GetImageFromArray(ct_volume((8, 20, 20))), str(tmp_path / "cut_0000.mhd"), False)
    raw = tmp_path / "cut_0000.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    rc, err = predict(["-i", tmp_path / "cut_0000.mhd", "-o", tmp_path / "out", "-m", model], capsys)
    assert rc == 1
    assert len(err) == 2  # the case's line and the run's summary; nothing from ITK
    assert "cut_0000.raw" in err[0] and "truncated" in err[0]


def test_a_checkpoint_holding_code_says_so(tmp_path, capsys):
    import os

    import torch

    class Payload:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    folder = make_model_folder(tmp_path / "model")
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    data = torch.load(ckpt, weights_only=False)
    data["payload"] = Payload()
    torch.save(data, ckpt)
    write_volume(tmp_path / "c_0000.nii.gz", ct_volume((8, 20, 20)))
    rc, err = predict(["-i", tmp_path / "c_0000.nii.gz", "-o", tmp_path / "out", "-m", folder], capsys)
    assert rc == 1 and len(err) == 1
    assert "holds code" in err[0] and "not run" in err[0] and "corrupted" not in err[0]


def test_timings_report_the_header_spacing(model, tmp_path, capsys):
    write_volume(tmp_path / "s_0000.nii.gz", ct_volume((8, 20, 20)), spacing_xyz=(1.6, 1.6, 2.5))
    rc, _ = predict(["-i", tmp_path / "s_0000.nii.gz", "-o", tmp_path / "out", "-m", model,
                     "--timings", tmp_path / "t.json"], capsys)
    assert rc == 0
    case = json.loads((tmp_path / "t.json").read_text())["cases"][0]
    assert case["spacing_zyx"] == [2.5, 1.6, 1.6]


@pytest.mark.parametrize("damage, field", [
    (lambda plans: plans.update(configurations=[1]), "'configurations'"),
    (lambda plans: plans["configurations"].update({"3d_fullres": [1]}), "configuration '3d_fullres'"),
    (lambda plans: plans["configurations"]["3d_fullres"].update(architecture=[1]), "'architecture'"),
])
def test_a_model_folder_with_malformed_plans_is_one_sentence(damage, field, tmp_path, capsys):
    folder = make_model_folder(tmp_path / "model")
    plans = json.loads((folder / "plans.json").read_text())
    damage(plans)
    (folder / "plans.json").write_text(json.dumps(plans))
    write_volume(tmp_path / "c_0000.nii.gz", ct_volume((8, 20, 20)))
    rc, err = predict(["-i", tmp_path / "c_0000.nii.gz", "-o", tmp_path / "out", "-m", folder], capsys)
    assert rc == 1 and len(err) == 1 and "plans.json" in err[0] and field in err[0]
