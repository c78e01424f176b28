"""Exact mode's slab-wise export gives nnU-Net's masks bit for bit
(``convert_predicted_logits_to_segmentation_with_correct_shape``) on geometries that take every
path: separate-z resampling along each axis (up and down), 3-D resampling, no resampling, a crop
inside a larger image, transposed plans, three classes, and logits with many float16 ties."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")
pytest.importorskip("skimage")

from nnunetv2.inference.export_prediction import \
    convert_predicted_logits_to_segmentation_with_correct_shape  # noqa: E402
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402

from fusionseg_kernels.inference import export  # noqa: E402
from tests.nnunet.support import PLANS  # noqa: E402


def _managers(spacing, transpose=(0, 1, 2), labels=("background", "lesion"), **resampling):
    plans = copy.deepcopy(PLANS)
    plans["transpose_forward"] = list(transpose)
    plans["transpose_backward"] = [int(i) for i in np.argsort(transpose)]
    config = plans["configurations"]["3d_fullres"]
    config["spacing"] = list(spacing)
    config["resampling_fn_probabilities_kwargs"].update(resampling)
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    lm = pm.get_label_manager({"labels": {name: i for i, name in enumerate(labels)}})
    return pm, cm, lm


def _logits(classes, shape, seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 3, shape)
    # nearly tied classes: every float16 rounding and tie rule shows in the mask
    stack = [base + rng.normal(0, 0.05, shape) * (c > 0) for c in range(classes)]
    return torch.from_numpy(np.stack(stack).astype(np.float16))


# (name, network spacing, original spacing (image axis order), network-resolution shape,
#  cropped shape, shape before cropping, bbox, transpose_forward, classes)
CASES = [
    ("FLARE-like separate z, upsampled", (3.0, 2.0, 2.0), (2.5, 0.8, 0.8), (7, 20, 24), (9, 51, 61),
     (12, 60, 64), [[1, 10], [4, 55], [0, 61]], (0, 1, 2), 2),
    ("separate z downsampled along z", (1.0, 2.0, 2.0), (4.0, 0.9, 0.9), (23, 11, 13), (6, 25, 29),
     (6, 25, 29), [[0, 6], [0, 25], [0, 29]], (0, 1, 2), 2),
    ("separate z along the last axis", (2.0, 2.0, 3.0), (0.7, 0.7, 3.5), (10, 12, 9), (29, 33, 8),
     (29, 40, 8), [[0, 29], [3, 36], [0, 8]], (0, 1, 2), 2),
    ("transposed plans", (3.0, 2.0, 2.0), (0.8, 2.5, 0.8), (7, 20, 24), (9, 51, 61),
     (51, 9, 61), [[0, 9], [0, 51], [0, 61]], (1, 0, 2), 2),
    ("3-D resampling", (1.4, 1.2, 1.2), (1.0, 0.8, 0.8), (9, 20, 24), (13, 31, 37),
     (15, 31, 40), [[2, 15], [0, 31], [1, 38]], (0, 1, 2), 2),
    ("3-D resampling, three classes", (1.0, 1.1, 0.9), (1.2, 1.0, 1.0), (16, 20, 24), (13, 22, 22),
     (13, 22, 22), [[0, 13], [0, 22], [0, 22]], (0, 1, 2), 3),
    ("no resampling", (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (8, 9, 10), (8, 9, 10),
     (10, 9, 12), [[1, 9], [0, 9], [2, 12]], (0, 1, 2), 3),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_slab_export_equals_nnunets(case, seed, monkeypatch):
    name, net_spacing, spacing, net_shape, cropped, before, bbox, transpose, classes = case
    labels = ("background", "a", "b")[:classes]
    pm, cm, lm = _managers(net_spacing, transpose, labels)
    props = {"spacing": list(spacing), "shape_after_cropping_and_before_resampling": cropped,
             "shape_before_cropping": before, "bbox_used_for_cropping": bbox}
    logits = _logits(classes, net_shape, seed)
    theirs = convert_predicted_logits_to_segmentation_with_correct_shape(logits.clone(), pm, cm, lm, dict(props))
    # small slabs: many boundaries, each slab reads a different set of input slices
    monkeypatch.setattr(export, "SLAB_VOXELS", 500)
    ours = export.export_mask(logits.clone(), pm, cm, lm, dict(props))
    assert ours.shape == theirs.shape and ours.dtype == np.uint8
    assert np.array_equal(ours, theirs), f"{int((ours != theirs).sum())} of {ours.size} voxels differ"
    assert len(np.unique(ours)) == len(labels)  # every class occurs: the case is not trivially uniform


def test_another_resampling_goes_through_nnunets_function(monkeypatch):
    pm, cm, lm = _managers((3.0, 2.0, 2.0), order=3)
    assert not export._slab_path_applies(cm, lm)
    props = {"spacing": [2.5, 0.8, 0.8], "shape_after_cropping_and_before_resampling": (9, 51, 61),
             "shape_before_cropping": (9, 51, 61), "bbox_used_for_cropping": [[0, 9], [0, 51], [0, 61]]}
    logits = _logits(2, (7, 20, 24), 3)
    called = []
    monkeypatch.setattr(export, "_resample_argmax_into", lambda *a: called.append(a))
    ours = export.export_mask(logits.clone(), pm, cm, lm, dict(props))
    theirs = convert_predicted_logits_to_segmentation_with_correct_shape(logits.clone(), pm, cm, lm, dict(props))
    assert not called and np.array_equal(ours, theirs)


def testorder0_sources_are_scipys_choice():
    from scipy.ndimage import map_coordinates

    for n_in, n_out in [(7, 23), (23, 7), (185, 554), (277, 554), (554, 277), (333, 554)]:
        vol = np.arange(n_in, dtype=np.float64)[:, None, None]
        coords = np.array(np.mgrid[:n_out, :1, :1], dtype=np.float64)
        coords[0] = float(n_in) / n_out * (coords[0] + 0.5) - 0.5
        expected = map_coordinates(vol, coords, order=0, mode="nearest")[:, 0, 0].astype(np.int64)
        assert np.array_equal(export.order0_sources(n_in, n_out), expected)
