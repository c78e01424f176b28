"""Lesion segmentation scores as the FLARE task-1 evaluation computes them: DSC and NSD at 2 mm.

Rules for one case (prediction and ground truth of the same file name):

1. Both masks are read with SimpleITK and cast to uint8 as numpy casts (integers wrap modulo 256,
   fractions are truncated); the spacing is the ground truth's, turned into array order (z, y, x).
   Voxels are compared by index: origin and direction are not compared.
2. A prediction holding any label above 1 scores DSC 0 and NSD 0.
3. The lesion is label 1 on both sides. Both empty: DSC 1, NSD 1. Exactly one empty: 0 and 0.
4. Otherwise DSC = 2|G ∩ P| / (|G| + |P|) and NSD = DeepMind surface-distance's surface Dice at
   2 mm (`compute_surface_distances(gt, pred, spacing)` then
   `compute_surface_dice_at_tolerance(..., 2)`), except that NSD is taken as 0 when DSC < 0.2.

Folders: every ``<case>.nii.gz`` of the ground-truth folder is a case. A case without a
prediction scores 0 and 0, counts in the means and is marked ``no prediction`` in the CSV; a
prediction without ground truth is listed (``no ground truth``, empty scores) and not scored. A
prediction whose size differs from its ground truth stops the evaluation with an error naming
the case.

surface-distance 0.1 uses ``np.Inf`` and ``np.NaN`` (both gone in numpy 2) only for empty masks;
rule 3 settles every case with an empty mask before surface-distance is called, so it runs
unchanged on numpy 2.
"""
from __future__ import annotations

import csv
import io
import math
import os
import warnings
from typing import Sequence

import numpy as np

from fusionseg_kernels import atomic, imageio
from fusionseg_kernels.errors import EvaluationError

__all__ = ["score_case", "score_case_detail", "read_mask", "evaluate_folders", "summarize",
           "write_csv", "TOLERANCE_MM", "NSD_DSC_THRESHOLD"]

TOLERANCE_MM = 2.0
NSD_DSC_THRESHOLD = 0.2
_SUFFIX = imageio.NIFTI_GZ

NOTE_LABEL_ABOVE_1 = "prediction has labels above 1"
NOTE_BOTH_EMPTY = "both empty"
NOTE_PRED_EMPTY = "empty prediction"
NOTE_GT_EMPTY = "empty ground truth"
NOTE_LOW_DSC = "DSC below 0.2, NSD set to 0"
NOTE_NO_PRED = "no prediction"
NOTE_NO_GT = "no ground truth"


def _as_uint8(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # float -> uint8 of out-of-range values
        return a.astype(np.uint8)


def score_case_detail(pred: np.ndarray, gt: np.ndarray,
                      spacing_zyx: Sequence[float]) -> tuple[float, float, str]:
    """`score_case` plus a note naming the rule that decided the score ('' for the plain
    DSC/NSD computation)."""
    import surface_distance as sd

    pred, gt = _as_uint8(pred), _as_uint8(gt)
    if pred.shape != gt.shape:
        raise EvaluationError(f"the prediction's shape {pred.shape} differs from the ground "
                              f"truth's {gt.shape}.")
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != gt.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise EvaluationError(f"spacing {spacing} must hold one positive value per axis of the "
                              f"{gt.ndim}-D masks.")
    if pred.size and int(pred.max()) > 1:
        return 0.0, 0.0, NOTE_LABEL_ABOVE_1
    g, p = gt == 1, pred == 1
    g_any, p_any = bool(g.any()), bool(p.any())
    if not g_any and not p_any:
        return 1.0, 1.0, NOTE_BOTH_EMPTY
    if not p_any:
        return 0.0, 0.0, NOTE_PRED_EMPTY
    if not g_any:
        return 0.0, 0.0, NOTE_GT_EMPTY
    dsc = float(sd.compute_dice_coefficient(g, p))
    if dsc < NSD_DSC_THRESHOLD:
        return dsc, 0.0, NOTE_LOW_DSC
    with warnings.catch_warnings():
        # surface-distance imports from scipy.ndimage's deprecated sub-namespaces
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                message=r".*scipy\.ndimage.*namespace")
        dists = sd.compute_surface_distances(g, p, spacing)
        nsd = float(sd.compute_surface_dice_at_tolerance(dists, TOLERANCE_MM))
    return dsc, nsd, ""


def score_case(pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[float, float]:
    """(DSC, NSD at 2 mm) of one case by FLARE's rules (module docstring).

    pred, gt: label arrays of the same shape in (z, y, x) order, any integer or float dtype
    (cast to uint8); spacing_zyx: voxel size in mm in the same axis order (z, y, x).
    """
    dsc, nsd, _ = score_case_detail(pred, gt, spacing_zyx)
    return dsc, nsd


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reads a 3-D mask with SimpleITK: (uint8 array (z, y, x), spacing (z, y, x) in mm)."""
    img, arr = imageio.read_mask(path)
    return _as_uint8(arr), tuple(float(s) for s in reversed(img.GetSpacing()))


def _values(arr: np.ndarray, limit: int = 3) -> str:
    vals = np.unique(arr)
    shown = ", ".join(f"{v:g}" for v in vals[:limit])
    return shown + (", ..." if len(vals) > limit else "")


def label_notes(pred: np.ndarray, gt: np.ndarray) -> list[str]:
    """What the masks hold before FLARE's uint8 cast that the cast hides: a ground truth with labels
    other than 0 and 1, a prediction with negative labels (-1 becomes 255) or non-integer values
    (0.5 becomes 0). FLARE's scores are kept; these notes give the true reason."""
    notes = []
    odd_gt = gt[(gt != 0) & (gt != 1)]
    if odd_gt.size:
        notes.append(f"ground truth holds labels other than 0 and 1 ({_values(odd_gt)}); only label 1 is scored")
    if np.issubdtype(pred.dtype, np.floating) and not np.array_equal(pred, np.trunc(pred)):
        fractions = pred[pred != np.trunc(pred)]
        notes.append(f"prediction holds non-integer values ({_values(fractions)}), which FLARE's uint8 cast truncates")
    negative = pred[pred < 0]
    if negative.size:
        notes.append(f"prediction holds negative labels ({_values(negative)}), which FLARE's uint8 cast wraps "
                     f"to 255 and scores 0")
    return notes


def geometry_difference(pred_img, gt_img) -> str | None:
    """How the prediction's grid differs from the ground truth's (spacing, origin, direction),
    None when it does not. FLARE scores with the ground truth's header and compares voxels by
    index, so a difference is scored as if it were not there: almost always a pipeline error."""
    checks = (("spacing", pred_img.GetSpacing(), gt_img.GetSpacing(), 1e-4),
              ("origin", pred_img.GetOrigin(), gt_img.GetOrigin(), 1e-3),
              ("direction", pred_img.GetDirection(), gt_img.GetDirection(), 1e-5))
    for what, p, g, tol in checks:
        if not np.allclose(p, g, rtol=0, atol=tol):
            return (f"the prediction's {what} {tuple(round(v, 4) for v in p)} differs from the ground truth's "
                    f"{tuple(round(v, 4) for v in g)}; scored on the ground truth's grid, as FLARE does")
    return None


def _cases(folder: str, role: str) -> dict[str, str]:
    if not os.path.isdir(folder):
        raise EvaluationError(f"the {role} folder {folder} does not exist or is not a folder.")
    return {case: os.fspath(path) for case, path in imageio.find_masks(folder).items()}


def evaluate_folders(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike,
                     progress=None, strict: bool = False) -> list[dict]:
    """Scores every ``<case>.nii.gz`` of `gt_dir` against the file of the same name in `pred_dir`.

    Returns one row per case, sorted by case name: dict(case, dsc, nsd, note) with dsc/nsd
    floats, or None for a prediction that has no ground truth (note ``no ground truth``). A case
    without a prediction gets 0, 0 and note ``no prediction``. `progress`, if given, is called
    with each row as it is computed.

    The note also says what FLARE's rules hide: a prediction on another grid than its ground truth
    (also in ``row["geometry"]``; with `strict`, an `EvaluationError`), and labels the uint8 cast
    changes (`label_notes`).
    """
    pred_dir, gt_dir = os.fspath(pred_dir), os.fspath(gt_dir)
    gts = _cases(gt_dir, "ground-truth")
    preds = _cases(pred_dir, "prediction")
    if not gts:
        raise EvaluationError(f"the ground-truth folder {gt_dir} holds no {_SUFFIX} files.")
    rows = []
    for case in sorted(set(gts) | set(preds)):
        if case not in gts:
            row = dict(case=case, dsc=None, nsd=None, note=NOTE_NO_GT)
        elif case not in preds:
            row = dict(case=case, dsc=0.0, nsd=0.0, note=NOTE_NO_PRED)
        else:
            gt_img, gt_raw = imageio.read_mask(gts[case])
            pred_img, pred_raw = imageio.read_mask(preds[case])
            if pred_raw.shape != gt_raw.shape:
                raise EvaluationError(
                    f"case {case}: the prediction {preds[case]} has size (z, y, x) = {pred_raw.shape} "
                    f"but the ground truth {gts[case]} has {gt_raw.shape}.")
            geometry = geometry_difference(pred_img, gt_img)
            if geometry and strict:
                raise EvaluationError(f"case {case}: {geometry} (without --strict this is a warning).")
            spacing = tuple(float(v) for v in reversed(gt_img.GetSpacing()))
            dsc, nsd, note = score_case_detail(_as_uint8(pred_raw), _as_uint8(gt_raw), spacing)
            reasons = label_notes(pred_raw, gt_raw)
            # the rule's own note only where no true reason replaces it (-1 is not "above 1")
            explained = {NOTE_LABEL_ABOVE_1: "negative labels", NOTE_PRED_EMPTY: "non-integer values"}
            if note in explained and any(explained[note] in r for r in reasons):
                note = ""
            notes = ([geometry] if geometry else []) + reasons + ([note] if note else [])
            row = dict(case=case, dsc=dsc, nsd=nsd, note="; ".join(notes), geometry=geometry)
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Means over the ground-truth cases (missing predictions count as 0): dict(n, mean_dsc,
    mean_nsd, missing_predictions, missing_ground_truth)."""
    scored = [r for r in rows if r["dsc"] is not None]
    n = len(scored)
    return dict(n=n,
                mean_dsc=sum(r["dsc"] for r in scored) / n if n else float("nan"),
                mean_nsd=sum(r["nsd"] for r in scored) / n if n else float("nan"),
                missing_predictions=[r["case"] for r in rows if r["note"] == NOTE_NO_PRED],
                missing_ground_truth=[r["case"] for r in rows if r["note"] == NOTE_NO_GT])


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Writes the rows as CSV with columns case,dsc,nsd,note, atomically (temporary file in the
    destination folder, then rename). Creates the folder."""
    path = os.fspath(path)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", "dsc", "nsd", "note"])
    for r in rows:
        w.writerow([r["case"], "" if r["dsc"] is None else repr(r["dsc"]),
                    "" if r["nsd"] is None else repr(r["nsd"]), r["note"]])
    atomic.write_text(path, buf.getvalue())
