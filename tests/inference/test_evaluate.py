"""FLARE task-1 scoring: DSC and NSD at 2 mm on hand-made masks, folders, CSV and CLI."""
import csv

import numpy as np
import pytest
import SimpleITK as sitk
import surface_distance

from fusionseg_kernels.cli import main
from fusionseg_kernels.errors import EvaluationError, FusionsegError, InputImageError
from fusionseg_kernels.evaluation import evaluate_folders, score_case, score_case_detail, summarize

# surface-distance itself (called directly below) imports from deprecated scipy.ndimage namespaces
pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")


def ellipsoid(shape, spacing, center_mm, semi_mm):
    """Boolean (z, y, x) ellipsoid; spacing, center and semi-axes in (z, y, x) mm."""
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center_mm, semi_mm)) <= 1.0


def overlap_dsc(d_over_r):
    """DSC of two equal spheres (or ellipsoids, shifted along one axis in units of that
    semi-axis) at distance d: lens volume pi (4r + d)(2r - d)^2 / 12 over the sphere volume."""
    d = d_over_r
    return (4 + d) * (2 - d) ** 2 / 16 if d < 2 else 0.0


SHAPE, SPACING = (30, 48, 64), (2.0, 1.0, 1.0)
SEMI = (16.0, 14.0, 15.0)
CENTER = (30.0, 24.0, 24.0)


def shifted(dx_vox):
    return ellipsoid(SHAPE, SPACING, (CENTER[0], CENTER[1], CENTER[2] + dx_vox * SPACING[2]), SEMI)


# ---- score_case -------------------------------------------------------------------------------


def test_offset_ellipsoids_dsc_matches_voxel_count_and_analytic_value():
    gt = shifted(0)
    for d in (2, 5, 9, 14):
        pred = shifted(d)
        dsc, nsd = score_case(pred.astype(np.uint8), gt.astype(np.uint8), SPACING)
        counted = 2 * (gt & pred).sum() / (gt.sum() + pred.sum())
        assert dsc == pytest.approx(counted, abs=1e-12)
        assert dsc == pytest.approx(overlap_dsc(d * SPACING[2] / SEMI[2]), abs=0.02)
        assert 0.0 <= nsd <= 1.0


def test_nsd_decreases_with_offset():
    gt = shifted(0).astype(np.uint8)
    nsds = [score_case(shifted(d).astype(np.uint8), gt, SPACING)[1] for d in (0, 1, 2, 3, 5, 8)]
    assert nsds[0] == 1.0 and nsds[1] == 1.0          # 1 mm is within the 2 mm tolerance
    assert all(a >= b for a, b in zip(nsds, nsds[1:]))
    assert nsds[2] > nsds[3] > nsds[4] > nsds[5]
    assert nsds[-1] < 0.6


def test_identical_masks_score_1_1():
    gt = shifted(0).astype(np.uint8)
    assert score_case(gt.copy(), gt, SPACING) == (1.0, 1.0)


def test_empty_masks():
    empty = np.zeros(SHAPE, np.uint8)
    full = shifted(0).astype(np.uint8)
    assert score_case_detail(empty, empty.copy(), SPACING) == (1.0, 1.0, "both empty")
    assert score_case(empty, full, SPACING) == (0.0, 0.0)        # empty prediction
    assert score_case(full, empty, SPACING) == (0.0, 0.0)        # empty ground truth


def test_surface_distance_alone_fails_on_empty_masks_under_numpy2():
    # why the empty cases are decided before surface-distance is called
    if hasattr(np, "Inf"):
        pytest.skip("numpy 1.x still has np.Inf")
    full, empty = shifted(0), np.zeros(SHAPE, bool)
    with pytest.raises(AttributeError):
        surface_distance.compute_surface_distances(full, empty, SPACING)


def test_one_voxel_z_offset_breaks_2mm_at_3mm_spacing_but_not_at_1mm():
    box = np.zeros((12, 20, 20), np.uint8)
    box[3:8, 5:15, 5:15] = 1
    moved = np.roll(box, 1, axis=0)
    dsc3, nsd3 = score_case(moved, box, (3.0, 1.0, 1.0))
    dsc1, nsd1 = score_case(moved, box, (1.0, 1.0, 1.0))
    assert dsc3 == dsc1 == pytest.approx(2 * 4 / 10)
    assert nsd1 == 1.0
    assert nsd3 < 0.95
    # the spacing is read in (z, y, x) order: 3 mm in-plane does not matter for a z shift
    assert score_case(moved, box, (1.0, 3.0, 3.0))[1] == 1.0


def test_labels_above_1_score_0_0():
    gt = shifted(0).astype(np.uint8)
    pred = gt.copy()
    pred[0, 0, 0] = 2
    assert score_case(pred, gt, SPACING) == (0.0, 0.0)


def test_low_dsc_sets_nsd_to_0():
    gt = ellipsoid((40, 40, 60), (1.0, 1.0, 1.0), (20, 20, 20), (8, 8, 8))
    pred = ellipsoid((40, 40, 60), (1.0, 1.0, 1.0), (20, 20, 32), (8, 8, 8))
    raw = surface_distance.compute_surface_dice_at_tolerance(
        surface_distance.compute_surface_distances(gt, pred, (1.0, 1.0, 1.0)), 2)
    assert raw > 0.05                                    # the rule, not the geometry, gives 0
    dsc, nsd = score_case(pred.astype(np.uint8), gt.astype(np.uint8), (1.0, 1.0, 1.0))
    assert 0 < dsc < 0.2 and nsd == 0.0


def test_masks_are_cast_to_uint8():
    gt = shifted(0)
    assert score_case(gt.astype(np.float32), gt.astype(np.int16), SPACING) == (1.0, 1.0)
    assert score_case(gt.astype(np.float64) * 1.5, gt.astype(np.uint8), SPACING) == (1.0, 1.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(EvaluationError, match="shape"):
        score_case(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8), (1, 1, 1))


# ---- folders and CLI ----------------------------------------------------------------------------


def write_mask(path, arr, spacing_zyx):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    sitk.WriteImage(img, str(path), True)


@pytest.fixture
def folders(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    a = shifted(0)
    for name in ("a", "b", "c"):
        write_mask(gt / f"{name}.nii.gz", a, SPACING)
    write_mask(gt / "e.nii.gz", np.zeros(SHAPE, bool), SPACING)
    write_mask(pred / "a.nii.gz", a, SPACING)
    write_mask(pred / "b.nii.gz", shifted(5), SPACING)
    write_mask(pred / "d.nii.gz", a, SPACING)             # no ground truth
    write_mask(pred / "e.nii.gz", np.zeros(SHAPE, bool), SPACING)
    (pred / "plans.json").write_text("{}")                # not a case
    return pred, gt


def test_evaluate_folders_rows_and_missing_cases(folders):
    pred, gt = folders
    rows = {r["case"]: r for r in evaluate_folders(pred, gt)}
    assert sorted(rows) == ["a", "b", "c", "d", "e"]
    assert (rows["a"]["dsc"], rows["a"]["nsd"]) == (1.0, 1.0)
    b_dsc, b_nsd = score_case(shifted(5).astype(np.uint8), shifted(0).astype(np.uint8), SPACING)
    assert (rows["b"]["dsc"], rows["b"]["nsd"]) == (b_dsc, b_nsd)
    assert rows["c"] == dict(case="c", dsc=0.0, nsd=0.0, note="no prediction")
    assert rows["d"] == dict(case="d", dsc=None, nsd=None, note="no ground truth")
    assert (rows["e"]["dsc"], rows["e"]["nsd"]) == (1.0, 1.0)
    s = summarize(list(rows.values()))
    assert s["n"] == 4
    assert s["mean_dsc"] == pytest.approx((1 + b_dsc + 0 + 1) / 4)
    assert s["mean_nsd"] == pytest.approx((1 + b_nsd + 0 + 1) / 4)
    assert s["missing_predictions"] == ["c"] and s["missing_ground_truth"] == ["d"]


def test_spacing_comes_from_the_ground_truth_header(tmp_path):
    box = np.zeros((12, 20, 20), np.uint8)
    box[3:8, 5:15, 5:15] = 1
    for gt_sp, pred_sp, full in (((3.0, 1.0, 1.0), (1.0, 1.0, 1.0), False),
                                 ((1.0, 1.0, 1.0), (3.0, 1.0, 1.0), True)):
        gt, pred = tmp_path / f"gt{full}", tmp_path / f"pred{full}"
        gt.mkdir()
        pred.mkdir()
        write_mask(gt / "x.nii.gz", box, gt_sp)
        write_mask(pred / "x.nii.gz", np.roll(box, 1, axis=0), pred_sp)
        (row,) = evaluate_folders(pred, gt)
        assert (row["nsd"] == 1.0) is full


def test_cli_writes_csv_prints_means_and_warns(folders, tmp_path, capsys):
    pred, gt = folders
    out = tmp_path / "res" / "metrics.csv"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out)]) == 0
    cap = capsys.readouterr()
    with open(out, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["case", "dsc", "nsd", "note"]
        rows = {r["case"]: r for r in reader}
    assert sorted(rows) == ["a", "b", "c", "d", "e"]
    assert float(rows["a"]["dsc"]) == 1.0 and rows["c"]["note"] == "no prediction"
    assert rows["d"]["dsc"] == "" and rows["d"]["note"] == "no ground truth"
    mean = np.mean([float(rows[c]["dsc"]) for c in "abce"])
    assert f"mean DSC {mean:.4f}" in cap.out
    warnings = [line for line in cap.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "c.nii.gz" in warnings[0] + warnings[1] and "d.nii.gz" in "".join(warnings)
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.csv"]   # no temporary left


def test_cli_size_mismatch_exits_1_and_keeps_old_csv(folders, tmp_path, capsys):
    pred, gt = folders
    write_mask(pred / "b.nii.gz", np.zeros((30, 48, 63), bool), SPACING)
    out = tmp_path / "metrics.csv"
    out.write_text("old\n")
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fusionseg evaluate: error: case b:") and "(30, 48, 63)" in err[-1]
    assert out.read_text() == "old\n"


@pytest.mark.parametrize("problem", ["no_gt_dir", "empty_gt", "bad_file", "out_is_dir"])
def test_cli_input_errors_exit_1(folders, tmp_path, capsys, problem):
    pred, gt = folders
    out = tmp_path / "m.csv"
    if problem == "no_gt_dir":
        gt = tmp_path / "missing"
    elif problem == "empty_gt":
        gt = tmp_path / "empty"
        gt.mkdir()
    elif problem == "bad_file":
        (pred / "a.nii.gz").write_bytes(b"not an image")
    else:
        out = tmp_path
    rc = main(["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("fusionseg evaluate: error:")


def test_unreadable_prediction_raises_input_image_error(folders):
    pred, gt = folders
    (pred / "a.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputImageError, match="a.nii.gz"):
        evaluate_folders(pred, gt)
    assert issubclass(EvaluationError, FusionsegError)


def test_cli_usage_error_exits_2(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--pred", str(tmp_path), "-o", str(tmp_path / "m.csv")])
    assert e.value.code == 2
