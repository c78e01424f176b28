"""Synthetic whole-body CT volumes with lesion labels, and nnU-Net raw datasets made of them.

A case is drawn from a seed: body outline, fat thickness, organ positions and sizes, tissue
densities, noise level and lesions all come from a numpy `Generator` seeded with it, so the same
seed gives the same arrays (byte for byte on the same machine and numpy version; numpy is
single-threaded here, so the thread count plays no part).

The phantom, from the bottom slice (array index z = 0, inferior) to the top (superior): two
thighs with femurs, the pelvis with iliac bones and the bladder, the abdomen with liver, spleen,
kidneys, aorta and visceral fat, the thorax with lungs, heart and ribs, then neck and head (skull
and brain). The spine runs through the trunk. The anatomy is laid out in fractions of the field
of view (in-plane) and of the scanned length (along z), so any size shows the whole body; the
lesions are sized in millimetres (radius 2.5-35 mm, limited by their organ).

Array conventions: every volume is a numpy array in (z, y, x) order; `spacing` is (z, y, x) in
mm. SimpleITK's own conventions (origin and spacing in (x, y, z) order, direction as a row-major
3x3 matrix) apply only to `SyntheticCase.origin`, `SyntheticCase.direction` and the files. The
direction is the identity: x runs to the patient's left, y to posterior, z to superior (LPS).

Memory: a case holds its int16 image and uint8 label (3 bytes per voxel; plus 1 with
``return_tissue=True``); everything else is computed one axial slice at a time.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from fusionseg_kernels import atomic, imageio
from fusionseg_kernels.errors import OutputFolderError, ParameterError

from .phantom import TISSUES, _Phantom
from .render import _Grid, _Renderer, _smoothing_kernel

__all__ = ["SyntheticCase", "synthesize_ct", "write_case", "write_dataset", "TISSUES",
           "MAX_SIZE", "DEFAULT_SIZE", "DEFAULT_SPACING", "case_name", "has_lesions"]

#: Most cases one dataset may hold (a count beyond it is a typo, not a dataset).
MAX_CASES = 100_000
#: Largest accepted size (z, y, x): 600 slices of 512 x 512.
MAX_SIZE = (600, 512, 512)
#: Default size (z, y, x) and spacing (z, y, x) in mm: a 410 mm field of view, 640 mm long.
DEFAULT_SIZE = (128, 256, 256)
DEFAULT_SPACING = (5.0, 1.6, 1.6)


_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_HU_MIN, _HU_MAX = -1024, 3071
_NO_LESION_EVERY = 4          # seeds with seed % 4 == 3 have no lesion


@dataclass
class SyntheticCase:
    """One synthetic CT.

    image: int16 (z, y, x) in HU; label: uint8 (z, y, x), 1 on lesion voxels, 0 elsewhere;
    spacing: (z, y, x) mm; origin: (x, y, z) mm and direction: 9 floats (row-major 3x3), both in
    SimpleITK's convention; seed: the seed it was drawn from; lesions: one dict per lesion placed
    (organ, center_zyx voxel index, radii_mm, contrast_hu relative to the organ); tissue: uint8
    (z, y, x) codes of `TISSUES` when asked for, else None.
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = _IDENTITY
    seed: int = 0
    lesions: list[dict] = field(default_factory=list)
    tissue: np.ndarray | None = None

    def to_sitk(self):
        """Returns (image, label) as SimpleITK images with this case's geometry."""
        return _to_sitk(self.image, self), _to_sitk(self.label, self)


def has_lesions(seed: int) -> bool:
    """Whether `synthesize_ct(seed=seed)` places lesions: every seed except those with
    seed % 4 == 3 (about one case in four has none)."""
    return seed % _NO_LESION_EVERY != _NO_LESION_EVERY - 1


def case_name(seed: int) -> str:
    """The case name `write_dataset` gives the case drawn from `seed`: ``synth_<seed, 5 digits>``."""
    return f"synth_{seed:05d}"


# ----------------------------------------------------------------------------------------------
# argument checks


def _check_size(size) -> tuple[int, int, int]:
    try:
        vals = tuple(size)
    except TypeError:
        raise ParameterError(f"size must be three integers (z, y, x), got {size!r}.") from None
    if len(vals) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 for v in vals):
        raise ParameterError(f"size must be three integers (z, y, x), got {size!r}.")
    vals = tuple(int(v) for v in vals)
    if min(vals) < 1:
        raise ParameterError(f"size (z, y, x) = {vals} must be positive in every axis.")
    if any(v > m for v, m in zip(vals, MAX_SIZE)):
        raise ParameterError(f"size (z, y, x) = {vals} exceeds the largest supported size "
                             f"{MAX_SIZE} (at most 600 slices of 512 x 512).")
    return vals


def _check_spacing(spacing) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise ParameterError(f"spacing must be three numbers (z, y, x) in mm, got {spacing!r}.") from None
    if len(vals) != 3:
        raise ParameterError(f"spacing must be three numbers (z, y, x) in mm, got {spacing!r}.")
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise ParameterError(f"spacing (z, y, x) = {vals} mm must be positive and finite in every axis.")
    return vals


def _check_free_disk(out_dir: str, n: int, size: Sequence[int]) -> None:
    """Refuses a dataset that would not fit the free space of the disk it goes to, before anything
    is written. The estimate is the uncompressed bytes (int16 image and uint8 label per voxel): an
    upper bound of what the gzip-compressed files take."""
    folder = Path(out_dir).resolve()
    while not folder.exists():
        folder = folder.parent
    need = n * 3 * int(np.prod(size, dtype=np.int64))
    free = shutil.disk_usage(folder).free
    if need > free:
        raise OutputFolderError(f"{n} cases of {tuple(size)} voxels need up to {need / 2**30:.1f} GiB, but the disk of "
                                f"{folder} has {free / 2**30:.1f} GiB free.")


def _check_seed(seed) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def synthesize_ct(size: Sequence[int] = DEFAULT_SIZE, spacing: Sequence[float] = DEFAULT_SPACING,
                  seed: int = 0, lesions: bool = True, *, return_tissue: bool = False) -> SyntheticCase:
    """Draws one synthetic whole-body CT.

    size: (z, y, x) voxels, each >= 1 and at most `MAX_SIZE` = (600, 512, 512); spacing: (z, y,
    x) mm, positive; seed: non-negative integer; lesions: False gives the same body without
    lesions (otherwise seeds with seed % 4 == 3 have none, see `has_lesions`); return_tissue:
    also return the uint8 (z, y, x) tissue map (codes in `TISSUES`).

    Returns a `SyntheticCase` with image int16 (z, y, x) HU in [-1024, 3071] and label uint8
    (z, y, x), 1 exactly on the voxels whose density was set by a lesion.
    """
    from scipy.ndimage import gaussian_filter

    size = _check_size(size)
    spacing = _check_spacing(spacing)
    seed = _check_seed(seed)
    root = np.random.SeedSequence(seed)
    ss_anat, ss_noise = root.spawn(2)
    ph = _Phantom(np.random.default_rng(ss_anat))
    grid = _Grid(size, spacing)
    rend = _Renderer(ph, grid, lesions=bool(lesions) and has_lesions(seed))

    nz, ny, nx = size
    image = np.empty(size, dtype=np.int16)
    label = np.empty(size, dtype=np.uint8)
    tissue = np.empty(size, dtype=np.uint8) if return_tissue else None
    hu = np.empty((ny, nx), dtype=np.float32)
    tis = np.empty((ny, nx), dtype=np.uint8)
    noise = np.empty((ny, nx), dtype=np.float32)
    sigma_px = 0.7
    noise_gain = np.float32(ph.noise_sd * _smoothing_kernel(sigma_px))
    for k, ss in enumerate(ss_noise.spawn(nz)):
        np.random.default_rng(ss).standard_normal(out=noise, dtype=np.float32)
        gaussian_filter(noise, sigma_px, output=noise, mode="reflect", truncate=4.0)
        noise *= noise_gain
        rend.render(k, hu, tis, label[k], noise)
        np.clip(np.rint(hu, out=hu), _HU_MIN, _HU_MAX, out=hu)
        image[k] = hu
        if tissue is not None:
            tissue[k] = tis
    sz, sy, sx = spacing
    origin = (-(nx / 2 - 0.5) * sx, -(ny / 2 - 0.5) * sy, -(nz / 2 - 0.5) * sz)
    info = [dict(organ=lesion["host"].name, center_zyx=tuple(int(c) for c in lesion["center"]),
                 radii_mm=tuple(float(r) for r in lesion["radii"]), contrast_hu=float(lesion["contrast"]))
            for lesion in rend.lesions]
    return SyntheticCase(image=image, label=label, spacing=spacing, origin=origin,
                         direction=_IDENTITY, seed=seed, lesions=info, tissue=tissue)


# ----------------------------------------------------------------------------------------------
# files


def _to_sitk(arr: np.ndarray, case: SyntheticCase):
    return imageio.image_from_array(arr, case.spacing, case.origin, case.direction)


def write_case(case: SyntheticCase, image_path: str | os.PathLike,
               label_path: str | os.PathLike | None = None) -> None:
    """Writes the case's image (and label, when a path is given) with SimpleITK, each atomically;
    the format follows the extension (.nii.gz, .nii, .mha, .nrrd, ...). Spacing is written in
    SimpleITK's (x, y, z) order, so reading back gives (z, y, x) arrays of the same shape."""
    imageio.write_image(_to_sitk(case.image, case), image_path)
    if label_path is not None:
        imageio.write_image(_to_sitk(case.label, case), label_path)


def write_dataset(out_dir: str | os.PathLike, n: int = 4, size: Sequence[int] = DEFAULT_SIZE,
                  spacing: Sequence[float] = DEFAULT_SPACING, seed: int = 0) -> list[str]:
    """Writes an nnU-Net v2 raw dataset of `n` synthetic cases into `out_dir`:
    imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz and dataset.json. Case i is drawn with
    seed `seed + i` and named `case_name(seed + i)` (synth_00000, synth_00001, ...).

    size: (z, y, x); spacing: (z, y, x) mm. Refuses a folder whose imagesTr/labelsTr already hold
    other cases (dataset.json would not match them). Returns the case names.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ParameterError(f"the number of cases must be a positive integer, got {n!r}.")
    if n > MAX_CASES:
        raise ParameterError(f"the number of cases must be at most {MAX_CASES}, got {n}.")
    size = _check_size(size)
    spacing = _check_spacing(spacing)
    seed = _check_seed(seed)
    out_dir = os.fspath(out_dir)
    _check_free_disk(out_dir, int(n), size)
    names = [case_name(seed + i) for i in range(int(n))]
    images, labels = os.path.join(out_dir, "imagesTr"), os.path.join(out_dir, "labelsTr")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputFolderError(f"cannot write the dataset into {out_dir}: it is a file, not a folder.")
    for folder in (images, labels):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise OutputFolderError(f"cannot create the folder {folder}: {err.strerror or err}.") from None
        if not os.access(folder, os.W_OK):
            raise OutputFolderError(f"cannot write into the folder {folder}: permission denied.")
    expected = {f"{c}_0000.nii.gz" for c in names} | {f"{c}.nii.gz" for c in names}
    others = sorted(f for folder in (images, labels) for f in os.listdir(folder)
                    if f.endswith(".nii.gz") and not f.startswith(".") and f not in expected)
    if others:
        raise OutputFolderError(f"{out_dir} already holds other cases ({', '.join(others[:3])}"
                                f"{', ...' if len(others) > 3 else ''}); write into an empty folder.")
    for i, name in enumerate(names):
        case = synthesize_ct(size, spacing, seed + i)
        write_case(case, os.path.join(images, f"{name}_0000.nii.gz"), os.path.join(labels, f"{name}.nii.gz"))
        del case
    meta = imageio.dataset_json(
        int(n), name="SyntheticWholeBodyCT",
        description=f"{n} synthetic whole-body CT cases with lesion labels (fusionseg synth, seeds "
                    f"{seed}..{seed + n - 1}, size z, y, x = {list(size)}, spacing z, y, x = {list(spacing)} mm)")
    atomic.write_json(os.path.join(out_dir, "dataset.json"), meta)
    return names
