"""The learning-check example, run for a few iterations on tiny phantoms: its outputs exist and
agree with one another, and the model folder it writes (read with the package's model-folder
reader and nnU-Net's CT normalization) gives back the example's own predictions."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytest.importorskip("nnunetv2", reason="the example trains with nnU-Net's loss (pip install -e .[exact])")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "learning_check.py"
TINY = ["--train-cases", "2", "--test-cases", "2", "--train-eval-cases", "1", "--size", "48", "64", "64",
        "--spacing", "13.3", "6.4", "6.4", "--patch", "8", "32", "32", "--threads", "1"]


@pytest.fixture(autouse=True)
def keep_thread_count():
    """main() sets torch's thread count (--threads); later tests keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def learning_check():
    spec = importlib.util.spec_from_file_location("learning_check", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(learning_check, tmp_path_factory):
    out = tmp_path_factory.mktemp("learning_check")
    threads = torch.get_num_threads()
    try:
        assert learning_check.main(TINY + ["--iterations", "3", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, json.loads((out / "result.json").read_text())


def test_result_counts_the_iterations_asked_for_and_scores_every_held_out_case(run):
    out, result = run
    assert result["iterations"] == 3
    assert len(result["loss_per_25_iterations"]) == 1
    assert [c["seed"] for c in result["cases"]] == [2000, 2001]
    for sub, suffix in (("images", "_0000.nii.gz"), ("gt", ".nii.gz"), ("pred", ".nii.gz")):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"case_{s}{suffix}" for s in (2000, 2001)]
    assert 0 < result["informed_threshold_global_dsc"] <= 1


def test_model_folder_reproduces_the_examples_predictions(run, learning_check):
    """Read back as inference reads it (nnU-Net's CT normalization with the folder's intensity
    properties, the network the plans describe, the checkpoint's weights), the model predicts
    exactly the masks the example wrote."""
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization

    from fusionseg_kernels.inference import load_model_folder

    out, _ = run
    bundle = load_model_folder(out / "model", backend="cpu")
    assert tuple(bundle.configuration["patch_size"]) == (8, 32, 32)
    assert tuple(bundle.configuration["spacing"]) == (13.3, 6.4, 6.4)
    assert bundle.mirroring_axes == (2,)       # trained with flips along x only
    props = bundle.plans["foreground_intensity_properties_per_channel"]["0"]
    net = bundle.network.eval()
    classes = set()
    for seed in (2000, 2001):
        hu = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "images" / f"case_{seed}_0000.nii.gz")))
        image = CTNormalization(use_mask_for_norm=False, intensityproperties=props).run(hu.astype(np.float32))
        np.testing.assert_allclose(image, learning_check.normalize(hu), rtol=0, atol=1e-6)
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "pred" / f"case_{seed}.nii.gz")))
        np.testing.assert_array_equal(learning_check.predict(net, learning_check.normalize(hu), (8, 32, 32)), written)
        classes |= set(np.unique(written).tolist())
    assert classes == {0, 1}, "an all-background mask would not tell trained weights from others"


def test_iterations_replace_minutes_in_the_recorded_settings(run):
    _, result = run
    assert "minutes" not in result["settings"] and result["settings"]["iterations"] == 3


@pytest.mark.parametrize("option, value, kind", [("--iterations", "0", "integer"), ("--minutes", "nan", "number"),
                                                 ("--lr", "inf", "number"), ("--test-cases", "-1", "integer")])
def test_counts_and_rates_must_be_positive_and_finite(learning_check, tmp_path, capsys, option, value, kind):
    with pytest.raises(SystemExit) as exc:
        learning_check.main(TINY + [option, value, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert f"must be a positive {kind}" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--patch", "64", "64", "64"], "must fit in --size"),
    (["--patch", "15", "32", "32"], "does not fit the network"),
])
def test_patches_the_data_or_the_network_cannot_take_are_refused(learning_check, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        learning_check.main(TINY + extra + ["--out", str(tmp_path)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_an_out_path_that_is_or_lies_under_a_file_is_refused_in_one_line(learning_check, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(SystemExit) as exc:
        learning_check.main(TINY + ["--out", str(afile)])
    assert exc.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err
    assert learning_check.main(TINY + ["--iterations", "1", "--out", str(afile / "sub")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("learning_check: ") and len(err.strip().splitlines()) == 1


def test_a_phantom_without_abdominal_organs_is_refused(learning_check):
    from fusionseg_kernels.errors import ParameterError

    with pytest.raises(ParameterError, match="no liver, spleen or kidney"):
        learning_check.abdominal_box(np.zeros((4, 4, 4), np.uint8), (1, 1, 1))
