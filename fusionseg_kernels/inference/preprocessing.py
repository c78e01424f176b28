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
    copied to float32, so that the caller's reference does not keep them alive meanwhile."""
    require_nnunetv2()
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration_name)
    preprocessor = cm.preprocessor_class(verbose=False)
    # what nnU-Net's SimpleITKIO.read_images returns for one 3-D file
    data = np.asarray(full_resolution.pop("voxels"))[None].astype(np.float32, casting="unsafe")
    full_resolution.clear()
    properties = {"sitk_stuff": dict(sitk_geometry), "spacing": [abs(float(s)) for s in spacing_zyx]}
    data, _, properties = preprocessor.run_case_npy(data, None, properties, pm, cm, dataset_json)
    return data, properties, pm, cm


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
