"""--mode exact against nnU-Net v2's own nnUNetPredictor on the same model folder and files:
identical preprocessed arrays and identical masks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

nnunetv2 = pytest.importorskip("nnunetv2")

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: E402
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402

from fusionseg_kernels.inference import PredictOptions, Predictor, load_model_folder  # noqa: E402
from fusionseg_kernels.inference.preprocessing import exact_preprocess  # noqa: E402
from tests.inference.predict_support import ct_volume, make_model_folder, write_volume  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("model_exact"), n_folds=2, seed=20)


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    a = ct_volume((14, 40, 44), seed=7)
    a[:, :3] = 0          # a zero border: nnU-Net crops to the non-zero bounding box
    a[-2:] = 0
    # in-plane 1.3-1.9 mm, slices 2.4 mm: resampled together (anisotropy below 3)
    write_volume(folder / "iso_0000.nii.gz", a, spacing_xyz=(1.9, 1.3, 2.4), origin=(-3.0, 4.0, 5.0),
                 direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
    # 1.2 mm in-plane, 5 mm slices: nnU-Net resamples along z separately (order 0)
    b = ct_volume((9, 52, 50), seed=8)
    write_volume(folder / "aniso_0000.nii.gz", b, spacing_xyz=(1.2, 1.25, 5.0))
    return folder


def _nnunet(bundle, tta: bool) -> nnUNetPredictor:
    pm = PlansManager(bundle.plans)
    cm = pm.get_configuration(bundle.configuration_name)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, allow_tqdm=False)
    predictor.manual_initialization(bundle.network, pm, cm, [dict(w) for w in bundle.fold_weights],
                                    bundle.dataset_json, bundle.trainer_name, bundle.mirroring_axes)
    return predictor


def test_preprocessing_identical(model, cases):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    bundle = load_model_folder(model)
    pm = PlansManager(bundle.plans)
    cm = pm.get_configuration(bundle.configuration_name)
    for f in sorted(cases.glob("*.nii.gz")):
        theirs, _, their_props = DefaultPreprocessor(verbose=False).run_case(
            [str(f)], None, pm, cm, bundle.dataset_json)
        img = sitk.ReadImage(str(f))
        geometry = {"spacing": img.GetSpacing(), "origin": img.GetOrigin(), "direction": img.GetDirection()}
        ours, props, _, _ = exact_preprocess({"voxels": sitk.GetArrayViewFromImage(img)}, img.GetSpacing()[::-1],
                                             geometry, bundle.plans, bundle.dataset_json,
                                             bundle.configuration_name)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)
        assert props["bbox_used_for_cropping"] == their_props["bbox_used_for_cropping"]
        assert list(props["shape_before_cropping"]) == list(their_props["shape_before_cropping"])


@pytest.mark.parametrize("tta", [False, True], ids=["plain", "tta"])
def test_masks_identical_to_nnunet_predictor(model, cases, tmp_path, tta):
    ours = Predictor(model, PredictOptions(device="cpu", mode="exact", tta=tta, quiet=True))
    assert ours.bundle.folds == ["0", "1"]
    files = sorted(cases.glob("*.nii.gz"))
    if tta:
        files = files[1:]   # one case is enough for the 8-pass variant
    results = ours.predict_paths(files, tmp_path / "ours")
    assert [r.status for r in results] == ["ok"] * len(files)
    (tmp_path / "theirs").mkdir()
    theirs = _nnunet(load_model_folder(model), tta)
    theirs.predict_from_files_sequential([[str(f)] for f in files],
                                         [str(tmp_path / "theirs" / f.name[:-12]) for f in files],
                                         save_probabilities=False, overwrite=True)
    for f in files:
        a = sitk.ReadImage(str(tmp_path / "ours" / (f.name[:-12] + ".nii.gz")))
        b = sitk.ReadImage(str(tmp_path / "theirs" / (f.name[:-12] + ".nii.gz")))
        assert a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing()
        assert a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection()
        ma, mb = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
        assert 0 < mb.mean() < 1, "the comparison needs a mask with both labels"
        np.testing.assert_array_equal(ma, mb)
