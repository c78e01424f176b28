"""Preprocessing: nnU-Net's own (exact mode) and a streamed torch version (fast mode).

Both apply the plans' ``transpose_forward``, the configuration's intensity normalization and a
resampling to the configuration's spacing, with nnU-Net's rule for the new shape
(``round(old_spacing / new_spacing * old_shape)`` per axis).

- exact: nnU-Net's ``DefaultPreprocessor.run_case_npy`` — crop to the non-zero bounding box,
  normalization, and nnU-Net's resampling functions (spline order 3 in-plane, order 0 along a
  strongly anisotropic axis) — on float32 arrays on the CPU. Needs nnunetv2.
- fast: no crop; the volume is moved to the device in slabs of slices, normalized there, and
  resampled with ``F.interpolate`` (bilinear in-plane per slab, then linear along the first axis:
  together a trilinear resampling that never holds the full-resolution volume as floats).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fusionseg_kernels.errors import EnvironmentSetupError, ModelFolderError


def require_nnunetv2():
    try:
        import nnunetv2  # noqa: F401
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: F401
    except ImportError as err:
        raise EnvironmentSetupError(f"--mode exact runs nnU-Net v2's own preprocessing and export, but "
                                    f"nnunetv2 cannot be imported here ({err}); install it "
                                    f"(pip install nnunetv2) or use --mode fast.") from None


def new_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``."""
    return tuple(int(round(sp / tg * s)) for s, sp, tg in zip(shape, spacing, target_spacing))


# ---------------------------------------------------------------------------------------------
# exact mode
def exact_preprocess(full_resolution: dict, spacing_zyx: Sequence[float], sitk_geometry: dict,
                     plans: dict, dataset_json: dict, configuration_name: str):
    """(preprocessed float32 array (1, d, h, w), nnU-Net's properties dict, plans manager,
    configuration manager) exactly as nnU-Net's predictor computes them from the same voxels.

    ``full_resolution["voxels"]`` holds the (z, y, x) voxels; the dict is emptied once they are
    no longer needed, so that the caller's reference does not keep them alive. CT plans take
    `_preprocess_by_slices` (the same array in a fraction of the time and memory); anything else
    runs nnU-Net's ``DefaultPreprocessor.run_case_npy``."""
    require_nnunetv2()
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration_name)
    properties = {"sitk_stuff": dict(sitk_geometry), "spacing": [abs(float(s)) for s in spacing_zyx]}
    if _slices_path_applies(pm, cm):
        data = _preprocess_by_slices(full_resolution, properties, pm, cm)
        if data is not None:
            return data, properties, pm, cm
    preprocessor = cm.preprocessor_class(verbose=False)
    # what nnU-Net's SimpleITKIO.read_images returns for one 3-D file
    data = np.asarray(full_resolution.pop("voxels"))[None].astype(np.float32, casting="unsafe")
    full_resolution.clear()
    data, _, properties = preprocessor.run_case_npy(data, None, properties, pm, cm, dataset_json)
    return data, properties, pm, cm


def _slices_path_applies(pm, cm) -> bool:
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    config = cm.configuration
    kwargs = dict(config.get("resampling_fn_data_kwargs") or {})
    schemes = [str(s).rsplit(".", 1)[-1] for s in config.get("normalization_schemes") or []]
    return (cm.preprocessor_class is DefaultPreprocessor and len(schemes) == 1
            and schemes[0] in ("CTNormalization", "NoNormalization")
            and str(config.get("resampling_fn_data", "")).rsplit(".", 1)[-1] == "resample_data_or_seg_to_shape"
            and kwargs.get("is_seg", False) is False and kwargs.get("force_separate_z", False) is None
            and int(kwargs.get("order_z", 0)) == 0 and set(kwargs) <= {"is_seg", "order", "order_z", "force_separate_z"}
            and len(cm.spacing) == 3)


def _nonzero_bbox(image: np.ndarray) -> list[list[int]]:
    """nnU-Net's crop box: the bounding box of the non-zero voxels with their holes filled
    (``create_nonzero_mask`` + ``get_bbox_from_mask``). Filling holes never moves a bounding
    box (a hole lies inside the voxels around it), so the fill is skipped; an image without a
    non-zero voxel keeps its whole extent, as there."""
    any_z = np.zeros(image.shape[0], bool)
    any_y = np.zeros(image.shape[1], bool)
    any_x = np.zeros(image.shape[2], bool)
    step = _slab_count(image.shape[1] * image.shape[2])
    for z0 in range(0, image.shape[0], step):
        nonzero = image[z0:z0 + step] != 0
        any_z[z0:z0 + step] = nonzero.any(axis=(1, 2))
        any_y |= nonzero.any(axis=(0, 2))
        any_x |= nonzero.any(axis=(0, 1))
    box = []
    for flags in (any_z, any_y, any_x):
        hits = np.flatnonzero(flags)
        box.append([int(hits[0]), int(hits[-1]) + 1] if hits.size else [0, int(flags.size)])
    return box


def _preprocess_by_slices(full_resolution: dict, properties: dict, pm, cm) -> np.ndarray | None:
    """``run_case_npy`` for one CT channel, slice by slice: transpose, crop to the non-zero box,
    CT (or no) normalization in float32, and nnU-Net's resampling when it works slice by slice —
    separate z (each input slice resized in-plane by the same skimage call, in float64; each
    output slice a copy of the one scipy's order 0 picks) or no resampling. Fills `properties`
    as nnU-Net does. None (nothing consumed) for 3-D resampling, whose spline prefilter spans
    the whole volume: nnU-Net's function does that."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, determine_do_sep_z_and_axis

    from .export import order0_sources

    tf = pm.transpose_forward
    image = np.asarray(full_resolution["voxels"]).transpose(tf)
    original_spacing = [properties["spacing"][i] for i in tf]
    target_spacing = list(cm.spacing)
    bbox = _nonzero_bbox(image)
    cropped = image[tuple(slice(a, b) for a, b in bbox)]
    new_shape = tuple(int(s) for s in compute_new_shape(cropped.shape, original_spacing, target_spacing))
    separate_z, axis = determine_do_sep_z_and_axis(None, original_spacing, target_spacing)
    resample = tuple(cropped.shape) != new_shape
    if resample and not separate_z:
        return None
    properties["shape_before_cropping"] = tuple(image.shape)
    properties["bbox_used_for_cropping"] = bbox
    properties["shape_after_cropping_and_before_resampling"] = tuple(cropped.shape)
    normalize = _ct_normalization(cm, pm) if cm.normalization_schemes[0].endswith("CTNormalization") else None
    order = int(cm.configuration["resampling_fn_data_kwargs"].get("order", 3))
    axis = int(axis) if resample else 0
    out = np.empty(new_shape, np.float32)
    moved_in, moved_out = np.moveaxis(cropped, axis, 0), np.moveaxis(out, axis, 0)
    sources = (order0_sources(moved_in.shape[0], moved_out.shape[0]) if moved_in.shape[0] != moved_out.shape[0]
               else np.arange(moved_in.shape[0]))

    def one_slice(source: int) -> np.ndarray:
        from skimage.transform import resize

        plane = np.array(moved_in[source], dtype=np.float32)
        if normalize is not None:
            normalize(plane)
        if not resample:
            return plane
        return resize(plane.astype(np.float64), moved_out.shape[1:], order, mode="edge", anti_aliasing=False)

    from concurrent.futures import ThreadPoolExecutor

    # each input slice once, in parallel (scipy's interpolation releases the GIL)
    unique = np.unique(sources)
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        for start in range(0, unique.size, 64):   # bounded: 64 resized slices in memory at a time
            chunk = unique[start:start + 64]
            for source, plane in zip(chunk, pool.map(one_slice, chunk)):
                moved_out[sources == source] = plane
    full_resolution.clear()
    return out[None]


def _ct_normalization(cm, pm):
    """nnU-Net's ``CTNormalization.run`` on a float32 array, in place."""
    props = pm.foreground_intensity_properties_per_channel["0"]
    lower, upper = props["percentile_00_5"], props["percentile_99_5"]
    mean, std = props["mean"], props["std"]

    def run(image: np.ndarray) -> None:
        np.clip(image, lower, upper, out=image)
        image -= mean
        image /= max(std, 1e-8)
    return run


# ---------------------------------------------------------------------------------------------
# fast mode
_SUPPORTED_NORMALIZATION = ("CTNormalization", "ZScoreNormalization", "NoNormalization")


def normalization_of(plans: dict, configuration: dict):
    """(scheme, parameters) of channel 0; raises `ModelFolderError` for a scheme fast mode lacks."""
    schemes = configuration.get("normalization_schemes") or ["ZScoreNormalization"]
    scheme = str(schemes[0]).rsplit(".", 1)[-1]
    if scheme not in _SUPPORTED_NORMALIZATION:
        raise ModelFolderError(f"plans.json: normalization {scheme!r} is not implemented in fast mode "
                               f"(it has {', '.join(_SUPPORTED_NORMALIZATION)}); use --mode exact.")
    if (configuration.get("use_mask_for_norm") or [False])[0] and scheme == "ZScoreNormalization":
        raise ModelFolderError("plans.json: z-score normalization inside the non-zero mask needs the crop "
                               "fast mode skips; use --mode exact.")
    params = {}
    if scheme == "CTNormalization":
        props = (plans.get("foreground_intensity_properties_per_channel") or {}).get("0")
        if not props:
            raise ModelFolderError("plans.json: CTNormalization needs "
                                   "foreground_intensity_properties_per_channel['0'].")
        params = {k: float(props[k]) for k in ("mean", "std", "percentile_00_5", "percentile_99_5")}
    return scheme, params


def _slab_count(hw: int, budget_voxels: int = 1 << 24) -> int:
    return max(1, min(64, budget_voxels // max(hw, 1)))


def _image_stats(image: np.ndarray) -> tuple[float, float]:
    """Mean and std of the whole volume in float64, computed in slabs."""
    n = image.size
    s = s2 = 0.0
    step = _slab_count(image.shape[1] * image.shape[2])
    for z in range(0, image.shape[0], step):
        chunk = np.asarray(image[z:z + step], dtype=np.float64)
        s += float(chunk.sum())
        s2 += float(np.square(chunk).sum())
    mean = s / n
    return mean, max(s2 / n - mean * mean, 0.0) ** 0.5


def fast_preprocess(image: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float],
                    scheme: str, params: dict, device: torch.device,
                    out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The normalized volume resampled to ``target_spacing``, as a (d, h, w) tensor on ``device``.

    ``image`` is a (d, h, w) array already in network axis order (it may be a strided view).
    Works slab by slab: a slab of slices is copied to the device, converted to float32,
    normalized and resampled in-plane; the in-plane-resampled stack is then resampled along the
    first axis. Peak extra memory: about one full-resolution slab plus two low-resolution volumes."""
    d, h, w = image.shape
    nd, nh, nw = new_shape((d, h, w), spacing, target_spacing)
    if scheme == "ZScoreNormalization":
        mean, std = _image_stats(image)
        params = {"mean": mean, "std": std}
    inplane = torch.empty((d, nh, nw), dtype=out_dtype, device=device)
    step = _slab_count(h * w)
    for z0 in range(0, d, step):
        chunk = image[z0:z0 + step]
        if not (chunk.flags.writeable and chunk.flags.c_contiguous):
            chunk = np.array(chunk, order="C")  # SimpleITK's array views are read-only
        t = torch.from_numpy(chunk).to(device).to(torch.float32)
        if scheme == "CTNormalization":
            t.clamp_(params["percentile_00_5"], params["percentile_99_5"])
            t.sub_(params["mean"]).div_(max(params["std"], 1e-8))
        elif scheme == "ZScoreNormalization":
            t.sub_(params["mean"]).div_(params["std"] + 1e-8)
        if (nh, nw) != (h, w):
            t = F.interpolate(t[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        inplane[z0:z0 + t.shape[0]] = t.to(out_dtype)
        del t
    if nd == d:
        return inplane
    out = torch.empty((nd, nh, nw), dtype=out_dtype, device=device)
    # linear along the first axis, in column blocks (each a separate interpolate call: the weights
    # depend only on d and nd, so splitting the other axes changes nothing)
    rows = max(1, (1 << 24) // max(nd * nw, 1))
    for y0 in range(0, nh, rows):
        block = inplane[:, y0:y0 + rows].to(torch.float32)
        res = F.interpolate(block[None, None], size=(nd, block.shape[1], nw), mode="trilinear",
                            align_corners=False)[0, 0]
        out[:, y0:y0 + rows] = res.to(out_dtype)
        del block, res
    del inplane
    return out
