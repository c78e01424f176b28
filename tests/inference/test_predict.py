"""fusionseg predict: geometry, labels, sliding window, TTA, fast-vs-exact agreement, CLI and timings."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from fusionseg_kernels.cli import main
from fusionseg_kernels.inference import PredictOptions, Predictor, load_model_folder
from fusionseg_kernels.inference.demo import threshold_network
from fusionseg_kernels.imageio import case_name, output_name
from fusionseg_kernels.inference.sliding_window import compute_steps, gaussian_importance, predict_logits_exact
from tests.inference.predict_support import (TINY_PATCH, ct_volume, leftovers, make_model_folder, rotation_direction,
                                  write_volume)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("model"))


def normalized(hu: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((np.clip(hu.astype(np.float32), -893, 578) + 43.0046) / 262.2776))


# ----------------------------------------------------------------------------------------------
def test_naming():
    assert output_name("/x/FLARE_0007_0000.nii.gz") == "FLARE_0007.nii.gz"
    assert output_name("a/case.nii.gz") == "case.nii.gz"
    assert output_name("a/b_0000.mha") == "b.mha"
    assert output_name("a/b_0000.nhdr") == "b.nrrd"
    assert case_name("q/c_0000.NII.GZ") == "c"


def test_steps_match_nnunet():
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    for image, tile, step in [((110, 64, 64), (64, 64, 64), 0.5), ((97, 203, 131), (16, 32, 32), 0.5),
                              ((16, 32, 33), (16, 32, 32), 0.3), ((300, 250, 200), (96, 128, 128), 1.0)]:
        assert compute_steps(image, tile, step) == compute_steps_for_sliding_window(image, tile, step)
    ours = gaussian_importance((16, 32, 32), floor=0.0).double()
    theirs = compute_gaussian((16, 32, 32), value_scaling_factor=1, dtype=torch.float64, device="cpu")
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-12)


def test_geometry_preserved_and_labels_valid(model, tmp_path):
    inputs = tmp_path / "in"
    arr = ct_volume((21, 37, 29), seed=1)
    cases = {
        "odd_0000.nii.gz": dict(spacing_xyz=(1.73, 2.41, 3.3), origin=(-101.5, 37.25, 12.0)),
        "flipped_0000.mha": dict(spacing_xyz=(2.2, 1.9, 2.9), origin=(10.0, -20.0, 30.0),
                                 direction=(-1, 0, 0, 0, 1, 0, 0, 0, -1)),
        "oblique_0000.nrrd": dict(spacing_xyz=(1.5, 2.5, 3.5), origin=(1.0, 2.0, 3.0),
                                  direction=rotation_direction(0.3, -0.2, 0.5)),
    }
    for name, geo in cases.items():
        write_volume(inputs / name, arr, **geo)
    out = tmp_path / "out"
    assert main(["predict", "-i", str(inputs), "-o", str(out), "-m", str(model), "--device", "cpu",
                 "--quiet", "--threads", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["flipped.mha", "oblique.nrrd", "odd.nii.gz"]
    for name in cases:
        src = sitk.ReadImage(str(inputs / name))
        mask = sitk.ReadImage(str(out / output_name(name)))
        assert mask.GetSize() == src.GetSize()
        # NRRD stores spacing times direction, so an oblique header round-trips only to ~1e-15
        tol = 1e-12 if name.endswith(".nrrd") else 0.0
        for got, want in [(mask.GetSpacing(), src.GetSpacing()), (mask.GetOrigin(), src.GetOrigin()),
                          (mask.GetDirection(), src.GetDirection())]:
            np.testing.assert_allclose(got, want, rtol=0, atol=tol)
        assert mask.GetPixelID() == sitk.sitkUInt8
        values = set(np.unique(sitk.GetArrayViewFromImage(mask)).tolist())
        assert values <= {0, 1}
    # the same voxels in different geometries give the same mask when the spacing is the same
    m = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "odd.nii.gz")))
    assert 0 < m.mean() < 1, "the test network should segment part of the volume"


def test_one_tile_is_one_forward_pass(model, tmp_path):
    """A volume at the target spacing and of exactly the patch size is one tile: the mask is the
    argmax of one forward pass (fast mode), and nnU-Net-style accumulation returns its logits."""
    arr = ct_volume(TINY_PATCH, seed=2)
    src = write_volume(tmp_path / "one_0000.nii.gz", arr, spacing_xyz=(2.0, 2.0, 3.0))
    predictor = Predictor(model, PredictOptions(device="cpu", mode="fast", quiet=True))
    res = predictor.predict_file(src, tmp_path / "one.nii.gz")
    assert res.tiles == 1 and res.network_shape == list(TINY_PATCH)
    net = predictor.bundle.network
    with torch.inference_mode():
        logits = net(normalized(arr)[None, None])[0]
    expected = logits.argmax(0).numpy().astype(np.uint8)
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "one.nii.gz")))
    assert 0 < expected.mean() < 1
    np.testing.assert_array_equal(got, expected)
    acc = predict_logits_exact(net, normalized(arr)[None], TINY_PATCH, 2, 0.5, None, torch.device("cpu"), False)
    assert acc.dtype == torch.float16
    # float16 weights and sums (as nnU-Net keeps them) lose precision where the Gaussian is tiny
    inner = gaussian_importance(TINY_PATCH, floor=0.0) > 1e-2
    torch.testing.assert_close(acc.float()[:, inner], logits[:, inner], atol=2e-2, rtol=2e-3)


def test_tta_is_symmetric(model, tmp_path):
    """With mirroring TTA, a mirrored input gives the mirrored mask (one tile, so the tile grid and
    the Gaussian play no part)."""
    arr = ct_volume(TINY_PATCH, seed=3)
    predictor = Predictor(model, PredictOptions(device="cpu", mode="fast", tta=True, quiet=True))
    assert predictor.mirror_axes == (0, 1, 2)
    masks = {}
    for axes in [(), (0,), (1,), (2,), (0, 1, 2)]:
        src = write_volume(tmp_path / f"m{len(masks)}_0000.nii.gz", np.ascontiguousarray(np.flip(arr, axes)))
        predictor.predict_file(src, tmp_path / f"m{len(masks)}.nii.gz")
        masks[axes] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"m{len(masks)}.nii.gz")))
    base = masks[()]
    assert 0 < base.mean() < 1
    for axes, m in masks.items():
        np.testing.assert_array_equal(np.flip(m, axes), base, err_msg=f"mirrored along {axes}")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * float((a & b).sum()) / float(s)


def test_fast_agrees_with_exact(model, tmp_path):
    """A network that segments the bones of the phantom: the fast mode's mask overlaps exact mode's."""
    arr = ct_volume((40, 72, 72), seed=4)
    src = write_volume(tmp_path / "ag_0000.nii.gz", arr, spacing_xyz=(1.6, 1.6, 2.5))
    masks = {}
    for mode in ("exact", "fast"):
        bundle = load_model_folder(model)
        bundle.network = threshold_network()
        bundle.fold_weights = [{}]
        Predictor(bundle, PredictOptions(device="cpu", mode=mode, quiet=True)).predict_file(
            src, tmp_path / f"{mode}.nii.gz")
        masks[mode] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{mode}.nii.gz")))
    assert masks["exact"].sum() > 100
    assert dice(masks["fast"], masks["exact"]) > 0.85


def test_cli_timings_and_progress(model, tmp_path, capsys):
    arr = ct_volume((18, 40, 40), seed=5)
    write_volume(tmp_path / "in" / "t1_0000.nii.gz", arr)
    timings = tmp_path / "timings.json"
    rc = main(["predict", "-i", str(tmp_path / "in" / "t1_0000.nii.gz"), "-o", str(tmp_path / "out"),
               "-m", str(model), "--device", "cpu", "--timings", str(timings), "--mode", "exact"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "t1" in captured.err and "tile" in captured.err          # the tqdm bar
    assert "network" in captured.out and "t1" in captured.out       # the timing table
    doc = json.loads(timings.read_text())
    assert doc["settings"]["mode"] == "exact" and doc["settings"]["folds"] == ["0"]
    (case,) = doc["cases"]
    assert case["status"] == "ok" and case["case"] == "t1"
    assert set(doc["stages"]) <= set(case["timings"]) and case["timings"]["total"] > 0
    assert case["shape_zyx"] == [18, 40, 40]
    assert leftovers(tmp_path / "out") == [] and (tmp_path / "out" / "t1.nii.gz").is_file()


def test_several_folds_average_like_nnunet(tmp_path):
    """Two folds with different weights: the exact result is nnU-Net's average of the folds' logits."""
    from fusionseg_kernels.inference.model_folder import create_model_folder
    from tests.inference.predict_support import tiny_network, tiny_plans

    nets = [tiny_network(10), tiny_network(11)]
    folder = create_model_folder(tmp_path / "m2", nets, tiny_plans())
    arr = ct_volume(TINY_PATCH, seed=6)
    data = normalized(arr)[None]
    p = Predictor(folder, PredictOptions(device="cpu", mode="fast", quiet=True))
    assert p.bundle.folds == ["0", "1"]
    src = write_volume(tmp_path / "f_0000.nii.gz", arr)
    p.predict_file(src, tmp_path / "f.nii.gz")
    with torch.inference_mode():
        mean = (nets[0](data[None]) + nets[1](data[None]))[0]
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "f.nii.gz")))
    np.testing.assert_array_equal(got, mean.argmax(0).numpy())
    single = Predictor(folder, PredictOptions(device="cpu", mode="fast", quiet=True, folds=["1"]))
    assert single.bundle.folds == ["1"]


def _malloc_module():
    path = Path(__file__).resolve().parents[2] / "fusionseg_kernels" / "inference" / "malloc.py"
    return str(path)


@pytest.mark.parametrize("env,expected", [({}, "mallopt"), ({"MALLOC_TRIM_THRESHOLD_": "1"}, "environment"),
                                          ({"NO": "1"}, "glibc default")])
def test_keep_freed_memory(env, expected):
    """mallopt is called only when the glibc variables are not set (a process of its own: the
    setting is per process). The module is loaded from its file, without importing torch."""
    import os
    import subprocess
    import sys

    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('m', sys.argv[1]); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "print(m.keep_freed_memory(enable=sys.argv[2] == '1'))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.update({k: v for k, v in env.items() if k != "NO"})
    out = subprocess.run([sys.executable, "-c", code, _malloc_module(), "0" if "NO" in env else "1"],
                         env=clean, capture_output=True, text=True, check=True).stdout
    assert out.startswith(expected), out


def test_demo_and_help(tmp_path, capsys):
    from fusionseg_kernels.inference.demo import make_demo

    model, images = make_demo(tmp_path, cases=1, size=(12, 40, 40))
    assert sorted(p.name for p in images.iterdir()) == ["demo_0000_0000.nii.gz"]
    assert load_model_folder(model).trainer_name == "nnUNetTrainernew"
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--help"])
    assert exc.value.code == 0 and "--mode" in capsys.readouterr().out
