"""Exact mode's preprocessing slice by slice equals nnU-Net's ``DefaultPreprocessor.run_case_npy``
bit for bit — the array and the properties the export needs — on geometries that take each path:
separate z along the first and the last axis, transposed plans, a crop to a non-zero box with a
hole inside, no resampling, an all-zero image; 3-D resampling and other normalizations go to
nnU-Net's function itself."""
from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("nnunetv2")

from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402

from fusionseg_kernels.inference import preprocessing  # noqa: E402
from fusionseg_kernels.inference.preprocessing import exact_preprocess  # noqa: E402
from tests.nnunet.support import DATASET_JSON, PLANS  # noqa: E402

CT_PROPERTIES = {"max": 3071.0, "mean": -43.0, "median": -20.0, "min": -1024.0, "percentile_00_5": -893.0,
                 "percentile_99_5": 578.0, "std": 262.3}


def _plans(spacing, transpose=(0, 1, 2), scheme="CTNormalization"):
    plans = copy.deepcopy(PLANS)
    plans["transpose_forward"] = list(transpose)
    plans["transpose_backward"] = [int(i) for i in np.argsort(transpose)]
    plans["foreground_intensity_properties_per_channel"] = {"0": CT_PROPERTIES}
    config = plans["configurations"]["3d_fullres"]
    config["spacing"] = list(spacing)
    config["normalization_schemes"] = [scheme]
    return plans


def _ct(shape, seed, border=0, hole=False):
    rng = np.random.default_rng(seed)
    image = rng.integers(-1024, 1500, size=shape).astype(np.int16)
    if border:
        image[:border] = 0
        image[:, -border:] = 0
        image[:, :, :border] = 0
    if hole:
        c = [s // 2 for s in shape]
        image[c[0] - 1:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 0
    return image


# (name, image (z, y, x) shape, spacing (z, y, x), network spacing, transpose, border, hole, zeros, scheme)
CASES = [
    ("separate z, FLARE-like", (11, 40, 44), (2.5, 0.8, 0.8), (3.0, 2.0, 2.0), (0, 1, 2), 0, False, False,
     "CTNormalization"),
    ("separate z, upsampled along z", (6, 30, 31), (5.0, 0.9, 0.9), (1.0, 1.5, 1.5), (0, 1, 2), 0, False, False,
     "CTNormalization"),
    ("separate z along the last axis", (30, 28, 7), (0.7, 0.7, 3.5), (2.0, 2.0, 3.0), (0, 1, 2), 0, False, False,
     "CTNormalization"),
    ("transposed plans", (40, 11, 44), (0.8, 2.5, 0.8), (3.0, 2.0, 2.0), (1, 0, 2), 0, False, False,
     "CTNormalization"),
    ("crop to the non-zero box with a hole", (14, 40, 44), (2.5, 0.8, 0.8), (3.0, 2.0, 2.0), (0, 1, 2), 3, True,
     False, "CTNormalization"),
    ("no resampling", (9, 20, 22), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (0, 1, 2), 2, False, False, "NoNormalization"),
    ("an all-zero image", (11, 40, 44), (2.5, 0.8, 0.8), (3.0, 2.0, 2.0), (0, 1, 2), 0, False, True,
     "CTNormalization"),
    ("3-D resampling (nnU-Net's function)", (12, 20, 22), (1.0, 0.8, 0.8), (1.4, 1.2, 1.2), (0, 1, 2), 0, False,
     False, "CTNormalization"),
    ("z-score (nnU-Net's function)", (11, 40, 44), (2.5, 0.8, 0.8), (3.0, 2.0, 2.0), (0, 1, 2), 0, False, False,
     "ZScoreNormalization"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_slice_preprocessing_equals_nnunets(case, monkeypatch):
    name, shape, spacing, net_spacing, transpose, border, hole, zeros, scheme = case
    plans = _plans(net_spacing, transpose, scheme)
    image = np.zeros(shape, np.int16) if zeros else _ct(shape, 0, border, hole)
    geometry = {"spacing": tuple(spacing[::-1]), "origin": (0.0, 0.0, 0.0), "direction": tuple(np.eye(3).ravel())}
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    theirs, _, their_props = cm.preprocessor_class(verbose=False).run_case_npy(
        image[None].astype(np.float32), None, {"sitk_stuff": geometry, "spacing": list(spacing)}, pm, cm, DATASET_JSON)
    fell_back = []
    slices = preprocessing._preprocess_by_slices
    monkeypatch.setattr(preprocessing, "_preprocess_by_slices",
                        lambda *a: (lambda r: (fell_back.append(r is None), r)[1])(slices(*a)))
    held = {"voxels": image}
    ours, props, _, _ = exact_preprocess(held, spacing, geometry, plans, DATASET_JSON, "3d_fullres")
    assert held == {}
    assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)
    for key in ("shape_before_cropping", "bbox_used_for_cropping", "shape_after_cropping_and_before_resampling"):
        assert props[key] == their_props[key] and type(props[key]) is type(their_props[key]), key
    by_slices = "nnU-Net's function" not in name
    assert fell_back == ([False] if by_slices and scheme != "ZScoreNormalization" else
                         ([True] if scheme != "ZScoreNormalization" else []))
