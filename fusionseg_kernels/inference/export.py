"""Exact-mode export in bounded memory: nnU-Net's logits-to-mask step, slab by slab.

nnU-Net's ``convert_predicted_logits_to_segmentation_with_correct_shape`` resamples the float16
logits (C, d, h, w) to the cropped image's shape as float64 copies of the whole volume, takes the
argmax, puts the result into the uncropped image and transposes it back. For a 512×512×554 CT
that holds about 87 bytes per output voxel at once (12 GB). The same mask comes out of this
module holding one slab of output slices at a time, because every output voxel depends on a few
input slices only:

- separate-z resampling (an anisotropic axis, nnU-Net's default for CT): each input slice is
  resized in-plane by the same ``skimage.transform.resize`` call nnU-Net makes (order 1, edge
  mode, float64, clipped to that slice's range), and each output slice along the anisotropic axis
  is a copy of one of them (order 0 along it) — the slice scipy's ``map_coordinates`` picks for
  nnU-Net's coordinate, which is asked of scipy itself for the axis's coordinates alone;
- 3-D resampling (order 1 on all axes): ``map_coordinates`` on the input slices a slab needs,
  with the coordinates scipy's ``zoom`` computes inside skimage's ``resize`` and skimage's clip to
  the whole channel's range;
- the resampled values are rounded to float16 (nnU-Net's output dtype) before the argmax, whose
  ties go to the lower class, as numpy's do.

`export_mask` takes this path when the configuration is nnU-Net's default probability
resampling (``resample_data_or_seg_to_shape`` with order 1, order_z 0, no forced separate z) and
the labels are not regions; anything else goes through nnU-Net's own function. Identity with it
is tested on odd geometries (tests/inference/test_export.py).
"""
from __future__ import annotations

import numpy as np
import torch

#: output voxels (per channel) of one slab: about 8 bytes each while it is resampled
SLAB_VOXELS = 1 << 22


def _slab_path_applies(configuration_manager, label_manager) -> bool:
    config = configuration_manager.configuration
    fn = str(config.get("resampling_fn_probabilities", "")).rsplit(".", 1)[-1]
    kwargs = dict(config.get("resampling_fn_probabilities_kwargs") or {})
    return (fn == "resample_data_or_seg_to_shape" and not label_manager.has_regions
            and kwargs.get("is_seg", False) is False and int(kwargs.get("order", 3)) == 1
            and int(kwargs.get("order_z", 0)) == 0 and kwargs.get("force_separate_z", False) is None
            and set(kwargs) <= {"is_seg", "order", "order_z", "force_separate_z"})


def export_mask(logits: torch.Tensor | np.ndarray, plans_manager, configuration_manager, label_manager,
                properties: dict) -> np.ndarray:
    """The uint8 mask nnU-Net's ``convert_predicted_logits_to_segmentation_with_correct_shape``
    gives for these float16 logits, in the original image's axis order."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    values = logits.numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    shape_before = tuple(int(s) for s in properties["shape_before_cropping"])
    bbox = [[int(a), int(b)] for a, b in properties["bbox_used_for_cropping"]]
    inside = all(0 <= a <= b <= s for (a, b), s in zip(bbox, shape_before))
    if (values.dtype != np.float16 or not _slab_path_applies(configuration_manager, label_manager) or not inside
            or len(label_manager.foreground_labels) >= 255 or np.isnan(values).any()):
        return np.asarray(convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, plans_manager, configuration_manager, label_manager, properties))
    target = tuple(int(s) for s in properties["shape_after_cropping_and_before_resampling"])
    tf = plans_manager.transpose_forward
    spacing_t = [properties["spacing"][i] for i in tf]
    current = (configuration_manager.spacing if len(configuration_manager.spacing) == len(target)
               else [spacing_t[0], *configuration_manager.spacing])
    mask = np.zeros(shape_before, dtype=np.uint8)
    region = mask[tuple(slice(a, b) for a, b in bbox)]
    if region.shape != target:
        raise RuntimeError(f"nnU-Net's crop {bbox} does not hold the resampled shape {target}")
    _resample_argmax_into(values, target, current, spacing_t, region)
    return mask.transpose(plans_manager.transpose_backward)


def _resample_argmax_into(values: np.ndarray, target: tuple, current_spacing, new_spacing, out: np.ndarray) -> None:
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    if tuple(values.shape[1:]) == target:   # nnU-Net returns the float16 logits unchanged
        for sl in _slabs(target, 0):
            out[sl] = _argmax(values[(slice(None), *sl)])
        return
    separate_z, axis = determine_do_sep_z_and_axis(None, current_spacing, new_spacing)
    if separate_z:
        _separate_z(values, target, int(axis), out)
    else:
        _three_d(values, target, out)


def _slabs(shape: tuple, axis: int):
    """Index tuples cutting `shape` into slabs along `axis` of about SLAB_VOXELS voxels."""
    per = max(1, SLAB_VOXELS // max(1, int(np.prod(shape, dtype=np.int64)) // shape[axis]))
    for start in range(0, shape[axis], per):
        sl = [slice(None)] * len(shape)
        sl[axis] = slice(start, min(start + per, shape[axis]))
        yield tuple(sl)


def _argmax(resampled_fp16: np.ndarray) -> np.ndarray:
    """numpy's argmax over the first axis (ties to the lower class), as uint8."""
    if resampled_fp16.shape[0] == 2:
        return (resampled_fp16[1] > resampled_fp16[0]).view(np.uint8)
    return resampled_fp16.argmax(0).astype(np.uint8)


def order0_sources(n_in: int, n_out: int) -> np.ndarray:
    """The input index scipy's order-0, mode 'nearest' ``map_coordinates`` reads for each output
    index at nnU-Net's coordinate ``n_in / n_out * (i + 0.5) - 0.5`` (asked of scipy itself)."""
    from scipy.ndimage import map_coordinates

    scale = float(n_in) / n_out
    coords = scale * (np.arange(n_out) + 0.5) - 0.5
    index = np.arange(n_in, dtype=np.float64)
    return map_coordinates(index, coords[None], order=0, mode="nearest").astype(np.int64)


def _separate_z(values: np.ndarray, target: tuple, axis: int, out: np.ndarray) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from skimage.transform import resize

    n_in = values.shape[1 + axis]
    inplane_shape = tuple(s for i, s in enumerate(target) if i != axis)
    sources = order0_sources(n_in, target[axis]) if n_in != target[axis] else np.arange(n_in)
    moved_out = np.moveaxis(out, axis, 0)                    # a view: output slices along the axis
    moved_in = np.moveaxis(values, 1 + axis, 1)

    def labels_of(source: int) -> np.ndarray:
        """The labels of one input slice's resampled logits: what nnU-Net computes for the slice,
        channel by channel in float64, rounded to float16, then the argmax. Output slices that
        copy this input slice (order 0 along the axis) copy these labels."""
        resampled = np.stack([resize(moved_in[c, source].astype(np.float64), inplane_shape, 1, mode="edge",
                                     anti_aliasing=False) for c in range(values.shape[0])]).astype(np.float16)
        return _argmax(resampled)

    unique = np.unique(sources)
    per_chunk = max(1, SLAB_VOXELS // max(1, int(np.prod(inplane_shape))))
    # the input slices a chunk of output slices needs, in parallel (scipy releases the GIL)
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        for start in range(0, unique.size, per_chunk):
            chunk = unique[start:start + per_chunk].tolist()
            for source, labels in zip(chunk, pool.map(labels_of, chunk)):
                moved_out[sources == source] = labels


def _zoom_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """scipy's ``zoom`` (grid mode) input coordinate of each output index, as skimage's ``resize``
    calls it: zoom = n_in / n_out from the shapes, ``(i + 0.5) * zoom - 0.5``."""
    zoom = np.divide(np.array([n_in]), np.array([n_out]))[0]
    return (np.arange(n_out, dtype=np.float64) + 0.5) * zoom - 0.5


def _three_d(values: np.ndarray, target: tuple, out: np.ndarray) -> None:
    from scipy.ndimage import map_coordinates

    n_in = values.shape[1:]
    cz, cy, cx = (_zoom_coordinates(i, o) for i, o in zip(n_in, target))
    ranges = [(float(values[c].min()), float(values[c].max())) for c in range(values.shape[0])]
    for sl in _slabs(target, 0):
        z = cz[sl[0]]
        lo = max(int(np.floor(z.min())), 0)
        hi = min(int(np.floor(z.max())) + 2, n_in[0])
        grid = np.array(np.meshgrid(z - lo, cy, cx, indexing="ij"))
        resampled = np.empty((values.shape[0], *grid.shape[1:]), dtype=np.float16)
        for c, (low, high) in enumerate(ranges):
            r = map_coordinates(values[c, lo:hi].astype(np.float64), grid, order=1, mode="nearest")
            np.clip(r, low, high, out=r)          # skimage clips to the whole input's range
            resampled[c] = r
        out[sl] = _argmax(resampled)
