"""The synthetic whole-body CT generator: determinism, tissue densities, lesions, files, CLI."""
import hashlib
import json
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk

from fusionseg_kernels.cli import main
from fusionseg_kernels.data.synth import (MAX_SIZE, TISSUES, SyntheticCase, case_name, has_lesions,
                                          synthesize_ct, write_case, write_dataset)
from fusionseg_kernels.errors import FusionsegError, OutputFolderError, ParameterError

SIZE = (40, 96, 96)          # (z, y, x)
SPACING = (10.0, 4.0, 4.0)   # (z, y, x) mm: a 384 mm field of view, 400 mm long


@pytest.fixture(scope="module")
def case0():
    return synthesize_ct(SIZE, SPACING, seed=0, return_tissue=True)


def _read(path):
    img = sitk.ReadImage(str(path))
    return img, sitk.GetArrayFromImage(img)


# ---- determinism ------------------------------------------------------------------------------


def test_same_seed_same_bytes_in_written_files_and_other_seeds_differ(tmp_path):
    arrays = {}
    for tag, seed in (("a", 5), ("b", 5), ("c", 6)):
        case = synthesize_ct((24, 48, 40), (8.0, 6.0, 6.0), seed=seed)
        write_case(case, tmp_path / f"{tag}_img.nii.gz", tmp_path / f"{tag}_lab.nii.gz")
        arrays[tag] = [_read(tmp_path / f"{tag}_{k}.nii.gz")[1] for k in ("img", "lab")]
    for k in range(2):
        assert arrays["a"][k].tobytes() == arrays["b"][k].tobytes()
    assert arrays["a"][0].tobytes() != arrays["c"][0].tobytes()
    assert arrays["a"][1].tobytes() != arrays["c"][1].tobytes()


def test_same_bytes_whatever_the_thread_count():
    # the package's __init__ (torch) is skipped to keep the two fresh interpreters quick
    pkg_dir = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules[synthesize_ct.__module__].__file__)))
    code = ("import hashlib, sys, types; pkg = types.ModuleType('fusionseg_kernels'); "
            f"pkg.__path__ = [{pkg_dir!r}]; sys.modules['fusionseg_kernels'] = pkg; "
            "from fusionseg_kernels.data.synth import synthesize_ct; "
            "c = synthesize_ct((16, 64, 48), (10.0, 5.0, 6.0), seed=9); "
            "print(hashlib.sha256(c.image.tobytes() + c.label.tobytes()).hexdigest())")
    digests = set()
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip().splitlines()[-1])
    c = synthesize_ct((16, 64, 48), (10.0, 5.0, 6.0), seed=9)
    digests.add(hashlib.sha256(c.image.tobytes() + c.label.tobytes()).hexdigest())
    assert len(digests) == 1


def test_lesions_false_changes_exactly_the_lesion_voxels():
    with_l = synthesize_ct(SIZE, SPACING, seed=1)
    without = synthesize_ct(SIZE, SPACING, seed=1, lesions=False)
    assert without.label.sum() == 0 and without.lesions == []
    lab = with_l.label.astype(bool)
    assert lab.sum() > 20
    changed = with_l.image != without.image
    assert not (changed & ~lab).any()                  # nothing outside the label changes
    assert changed[lab].mean() > 0.95                  # and (almost) every label voxel does


# ---- densities and anatomy ----------------------------------------------------------------------


def test_types_shapes_and_hu_range(case0):
    assert isinstance(case0, SyntheticCase)
    assert case0.image.dtype == np.int16 and case0.image.shape == SIZE
    assert case0.label.dtype == np.uint8 and case0.label.shape == SIZE
    assert set(np.unique(case0.label)) <= {0, 1}
    assert case0.image.min() >= -1024 and case0.image.max() <= 3071
    assert case0.spacing == SPACING and len(case0.origin) == 3 and len(case0.direction) == 9


@pytest.mark.parametrize("tissue, lo, hi", [
    ("air", -1010, -990), ("fat", -130, -70), ("soft_tissue", 30, 60), ("lung", -900, -780),
    ("liver", 45, 80), ("kidney", 18, 45), ("spleen", 35, 65), ("cortical_bone", 600, 1200),
    ("cancellous_bone", 260, 400)])
def test_tissue_medians(case0, tissue, lo, hi):
    m = (case0.tissue == TISSUES[tissue]) & (case0.label == 0)
    assert m.sum() > 30, tissue
    assert lo <= np.median(case0.image[m]) <= hi


def test_noise_level_in_air(case0):
    air = case0.image[case0.tissue == TISSUES["air"]].astype(np.float64)
    sd = 1.4826 * np.median(np.abs(air - np.median(air)))   # robust: the -1024 clip cuts the tail
    assert 8.0 <= sd <= 22.0


def test_lungs_in_the_upper_part_and_bone_present(case0):
    z_lung = np.nonzero((case0.tissue == TISSUES["lung"]).any(axis=(1, 2)))[0]
    assert z_lung.min() > 0.5 * SIZE[0]
    assert (case0.tissue == TISSUES["cortical_bone"]).sum() > 100
    assert (case0.image >= 300).sum() > 100


def test_lesions_lie_in_organs_inside_the_body(case0):
    lab = case0.label.astype(bool)
    assert lab.any()
    organs = {TISSUES["liver"], TISSUES["kidney"], TISSUES["spleen"]}
    assert set(np.unique(case0.tissue[lab])) <= organs
    # contrast relative to the organ is within the generator's -30..+60 HU (plus noise)
    for les in case0.lesions:
        assert -30 <= les["contrast_hu"] <= 60 and abs(les["contrast_hu"]) >= 8
    assert case0.image[lab].min() > -150


def test_some_seeds_have_no_lesion_and_others_do():
    for seed in range(8):
        case = synthesize_ct((32, 64, 64), (12.0, 6.0, 6.0), seed=seed)
        assert has_lesions(seed) == (seed % 4 != 3)
        if has_lesions(seed):
            assert case.label.sum() > 0 and case.lesions
        else:
            assert case.label.sum() == 0 and case.lesions == []


def test_lesion_sizes_vary_from_millimetres_to_centimetres():
    radii = [max(les["radii_mm"]) for seed in (0, 1, 2, 4, 5, 6)
             for les in synthesize_ct((100, 128, 128), (10.0, 3.2, 3.2), seed=seed).lesions]
    assert min(radii) < 8 and max(radii) > 15


def test_generation_holds_little_beyond_the_outputs():
    size = (32, 256, 256)
    tracemalloc.start()
    try:
        case = synthesize_ct(size, (20.0, 1.6, 1.6), seed=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = case.image.nbytes + case.label.nbytes
    assert peak < outputs + 12 * 2**20, (peak, outputs)     # a few slice-sized work arrays only


@pytest.mark.slow
def test_largest_case_is_fast_on_one_core():
    start = time.process_time()
    case = synthesize_ct(MAX_SIZE, (2.5, 0.8, 0.8), seed=1)
    cpu = time.process_time() - start
    assert case.image.shape == MAX_SIZE and case.label.any()
    assert cpu < 40.0, cpu


# ---- files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".nrrd"])
def test_written_geometry_reads_back(tmp_path, ext):
    size, spacing = (20, 30, 40), (3.0, 0.9, 0.7)       # (z, y, x): all different
    case = synthesize_ct(size, spacing, seed=2)
    write_case(case, tmp_path / f"img{ext}", tmp_path / f"lab{ext}")
    img, arr = _read(tmp_path / f"img{ext}")
    lab, larr = _read(tmp_path / f"lab{ext}")
    assert img.GetSize() == (40, 30, 20)                  # SimpleITK: (x, y, z)
    assert img.GetSpacing() == pytest.approx((0.7, 0.9, 3.0))
    assert img.GetOrigin() == pytest.approx(case.origin)
    assert img.GetDirection() == pytest.approx(case.direction)
    assert arr.shape == size and arr.dtype == np.int16 and np.array_equal(arr, case.image)
    assert larr.shape == size and larr.dtype == np.uint8 and np.array_equal(larr, case.label)
    assert lab.GetSpacing() == img.GetSpacing()
    assert sorted(os.listdir(tmp_path)) == sorted([f"img{ext}", f"lab{ext}"])   # no temporaries


def test_write_case_errors(tmp_path):
    case = synthesize_ct((4, 8, 8), (5.0, 5.0, 5.0), seed=0)
    with pytest.raises(OutputFolderError, match="single-file"):
        write_case(case, tmp_path / "img.mhd")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputFolderError, match="afile"):
        write_case(case, tmp_path / "afile" / "img.nii.gz")
    with pytest.raises(OutputFolderError, match="img.xyz"):
        write_case(case, tmp_path / "img.xyz")
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_write_dataset_layout_and_dataset_json(tmp_path):
    names = write_dataset(tmp_path / "ds", n=3, size=(16, 32, 24), spacing=(6.0, 2.0, 2.5), seed=10)
    assert names == ["synth_00010", "synth_00011", "synth_00012"] == [case_name(s) for s in (10, 11, 12)]
    ds = tmp_path / "ds"
    assert sorted(os.listdir(ds / "imagesTr")) == [f"{n}_0000.nii.gz" for n in names]
    assert sorted(os.listdir(ds / "labelsTr")) == [f"{n}.nii.gz" for n in names]
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "lesion": 1}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    img, arr = _read(ds / "imagesTr" / "synth_00011_0000.nii.gz")
    assert arr.shape == (16, 32, 24) and img.GetSpacing() == pytest.approx((2.5, 2.0, 6.0))
    assert np.array_equal(arr, synthesize_ct((16, 32, 24), (6.0, 2.0, 2.5), seed=11).image)
    # the same call again overwrites; a smaller one that would leave other cases is refused
    assert write_dataset(ds, n=3, size=(16, 32, 24), spacing=(6.0, 2.0, 2.5), seed=10) == names
    with pytest.raises(OutputFolderError, match="other cases"):
        write_dataset(ds, n=1, size=(16, 32, 24), spacing=(6.0, 2.0, 2.5), seed=10)


@pytest.mark.slow
def test_nnunet_accepts_the_dataset(tmp_path):
    pytest.importorskip("nnunetv2")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    write_dataset(tmp_path, n=2, size=(12, 24, 24), spacing=(8.0, 8.0, 8.0), seed=0)
    verify_dataset_integrity(str(tmp_path), 1)          # raises on any inconsistency


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=(0, 8, 8)), "positive"), (dict(size=(601, 8, 8)), "largest"),
    (dict(size=(8, 513, 8)), "largest"), (dict(size=(8, 8)), "three integers"),
    (dict(size=(8.5, 8, 8)), "three integers"), (dict(spacing=(1.0, -1.0, 1.0)), "positive"),
    (dict(spacing=(0.0, 1.0, 1.0)), "positive"), (dict(spacing=(1.0, float("nan"), 1.0)), "positive"),
    (dict(seed=-1), "seed")])
def test_bad_parameters(kwargs, match):
    args = dict(size=(8, 8, 8), spacing=(1.0, 1.0, 1.0), seed=0) | kwargs
    with pytest.raises(ParameterError, match=match):
        synthesize_ct(**args)


def test_max_size_constant():
    assert MAX_SIZE == (600, 512, 512)


# ---- command line -----------------------------------------------------------------------------


def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "raw"
    rc = main(["synth", "-o", str(out), "-n", "2", "--size", "12", "20", "16",
               "--spacing", "9", "3", "4", "--seed", "3"])
    assert rc == 0
    assert "synth_00003" in capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 2
    img, arr = _read(out / "imagesTr" / "synth_00004_0000.nii.gz")
    assert arr.shape == (12, 20, 16) and img.GetSpacing() == pytest.approx((4.0, 3.0, 9.0))
    _, lab = _read(out / "labelsTr" / "synth_00003.nii.gz")
    assert lab.sum() == 0                                  # seed 3: no lesion


@pytest.mark.parametrize("argv, needle", [
    (["--size", "0", "8", "8"], "positive"), (["--size", "601", "8", "8"], "largest"),
    (["--size", "8", "8", "600"], "largest"), (["--spacing", "1", "-2", "1"], "positive"),
    (["-n", "0"], "number of cases"), (["--seed", "-4"], "seed")])
def test_cli_bad_values_exit_1_with_one_line(tmp_path, capsys, argv, needle):
    rc = main(["synth", "-o", str(tmp_path / "x"), "--size", "4", "8", "8"] + argv)
    err = capsys.readouterr().err
    assert rc == 1
    assert needle in err and err.count("\n") == 1 and err.startswith("fusionseg synth: error:")


def test_cli_unwritable_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc = main(["synth", "-o", str(tmp_path / "file" / "ds"), "--size", "4", "8", "8"])
    err = capsys.readouterr().err
    assert rc == 1 and "file" in err and err.count("\n") == 1


def test_cli_usage_errors_exit_2(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["synth", "-o", str(tmp_path), "--size", "4", "8"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["synth"])
    assert e.value.code == 2


def test_errors_are_fusionseg_errors():
    assert issubclass(ParameterError, FusionsegError) and issubclass(OutputFolderError, FusionsegError)
