"""Sliding-window prediction over a preprocessed volume, tile by tile.

Tile positions and the Gaussian importance map follow nnU-Net v2 (``compute_steps_for_sliding_window``,
``compute_gaussian`` with sigma = patch / 8). Two accumulations:

- `predict_logits_exact`: nnU-Net's predictor, operation for operation — float16 logit and weight
  accumulators, Gaussian scaled to a maximum of 10 and stored in float16, tile logits multiplied
  by it in the network's dtype, then ``logits / weights``; mirroring averages the flipped
  predictions before weighting.
- `predict_labels_fast`: the Gaussian-weighted sum of logits only (dividing by the summed weights
  does not change the argmax; with two classes only the difference of the two), accumulated in
  float16 on a GPU (float32 on the CPU), then the
  argmax at network resolution. On a GPU out-of-memory error the accumulators move to the CPU and
  the volume is predicted again.
"""
from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def compute_steps(image_size: Sequence[int], tile_size: Sequence[int], step: float) -> list[list[int]]:
    """Tile start positions per axis — nnU-Net's ``compute_steps_for_sliding_window``."""
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    steps = []
    for i, k in zip(image_size, tile_size):
        if i < k:
            raise ValueError(f"image size {tuple(image_size)} is smaller than the tile {tuple(tile_size)}")
        n = int(np.ceil((i - k) / (k * step))) + 1
        actual = (i - k) / (n - 1) if n > 1 else 99999999999
        steps.append([int(np.round(actual * j)) for j in range(n)])
    return steps


def tile_slices(image_size: Sequence[int], tile_size: Sequence[int], step: float) -> list[tuple[slice, ...]]:
    steps = compute_steps(image_size, tile_size, step)
    return [tuple(slice(s, s + t) for s, t in zip(pos, tile_size)) for pos in itertools.product(*steps)]


def pad_amounts(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) padding per axis so that every axis is at least the patch — as
    acvl_utils' ``pad_nd_image`` splits it (the smaller half before)."""
    out = []
    for s, p in zip(shape, patch):
        diff = max(p - s, 0)
        out.append((diff // 2, diff - diff // 2))
    return out


@lru_cache(maxsize=4)
def _gaussian_1d(size: int, sigma_scale: float) -> np.ndarray:
    sigma = size * sigma_scale
    center = size // 2
    radius = int(4.0 * sigma + 0.5)  # scipy.ndimage.gaussian_filter's default truncate=4
    x = np.arange(size, dtype=np.float64) - center
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g[np.abs(x) > radius] = 0.0
    return g / g.max()


def gaussian_importance(tile_size: Sequence[int], sigma_scale: float = 1.0 / 8, floor: float = 2.0 ** -10,
                        device=None, dtype=torch.float32) -> torch.Tensor:
    """Separable Gaussian with maximum 1 (nnU-Net's shape, sigma = tile * sigma_scale),
    clamped below at ``floor`` so that no voxel of a tile gets (in float16) a zero weight."""
    g = np.ones((), dtype=np.float64)
    for s in tile_size:
        g = np.multiply.outer(g, _gaussian_1d(int(s), sigma_scale))
    g = np.maximum(g, floor)
    return torch.from_numpy(g).to(device=device, dtype=dtype)


def mirror_combinations(axes: Iterable[int] | None) -> list[tuple[int, ...]]:
    """The flips nnU-Net averages for test-time augmentation (spatial axes of a 5-D batch)."""
    if not axes:
        return []
    axes = [a + 2 for a in axes]
    return [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]


def _forward(network, x: torch.Tensor) -> torch.Tensor:
    out = network(x)
    if isinstance(out, (list, tuple)):  # a deep-supervision network: the full-resolution output
        out = out[0]
    return out


def forward_with_mirroring(network, x: torch.Tensor, mirror_axes) -> torch.Tensor:
    """nnU-Net's ``_internal_maybe_mirror_and_predict``."""
    prediction = _forward(network, x)
    combos = mirror_combinations(mirror_axes)
    for axes in combos:
        prediction += torch.flip(_forward(network, torch.flip(x, axes)), axes)
    if combos:
        prediction /= len(combos) + 1
    return prediction


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if device.type == "cuda" and dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


# ---------------------------------------------------------------------------------------------
@torch.inference_mode()
def predict_logits_exact(network, data: torch.Tensor, patch: Sequence[int], num_classes: int, step: float,
                         mirror_axes, device: torch.device, on_device: bool,
                         on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """nnU-Net's ``predict_sliding_window_return_logits`` for one set of weights: (C, d, h, w)
    float16 logits (on the results device) for a (1, d, h, w) float32 array, padding reverted."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    with _autocast(device, torch.float16):
        padded, revert = pad_nd_image(data, list(patch), "constant", {"value": 0}, True, None)
        slicers = [(slice(None), *s) for s in tile_slices(padded.shape[1:], patch, step)]
        results_device = device if on_device else torch.device("cpu")
        padded = padded.to(results_device)
        logits = torch.zeros((num_classes, *padded.shape[1:]), dtype=torch.half, device=results_device)
        weights = torch.zeros(padded.shape[1:], dtype=torch.half, device=results_device)
        gaussian = compute_gaussian(tuple(patch), sigma_scale=1.0 / 8, value_scaling_factor=10,
                                    device=results_device)
        for sl in slicers:
            tile = torch.clone(padded[sl][None], memory_format=torch.contiguous_format).to(device)
            pred = forward_with_mirroring(network, tile, mirror_axes)[0].to(results_device)
            pred *= gaussian
            logits[sl] += pred
            weights[sl[1:]] += gaussian
            del tile, pred
            if on_tile is not None:
                on_tile()
        torch.div(logits, weights, out=logits)
        if torch.any(torch.isinf(logits)):
            raise RuntimeError("infinite values in the accumulated logits (float16 overflow)")
        return logits[(slice(None), *revert[1:])]


@torch.inference_mode()
def predict_labels_fast(networks_weights, network, volume: torch.Tensor, patch: Sequence[int],
                        num_classes: int, step: float, mirror_axes, device: torch.device,
                        amp_dtype: torch.dtype | None, accumulate_on_device: bool = True,
                        on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """Labels (uint8, (d, h, w), on the device the accumulators live on) for a preprocessed (d, h, w)
    volume: Gaussian-weighted logits summed over tiles and folds, argmax.

    ``networks_weights``: the state dicts to run (one per fold; None: the network as it is).
    ``volume`` may live on the CPU or on ``device``; tiles are copied to ``device`` one at a time."""
    shape = tuple(volume.shape)
    pads = pad_amounts(shape, patch)
    if any(p != (0, 0) for p in pads):
        flat = [v for p in reversed(pads) for v in p]
        volume = F.pad(volume[None, None], flat, mode="constant", value=0.0)[0, 0]
    padded_shape = tuple(volume.shape)
    slices = tile_slices(padded_shape, patch, step)
    acc_device = device if accumulate_on_device else torch.device("cpu")
    acc_dtype = torch.float16 if acc_device.type == "cuda" else torch.float32
    # two classes: only the difference of the two logits is summed (its sign is the argmax)
    binary = num_classes == 2
    acc = torch.zeros((1 if binary else num_classes, *padded_shape), dtype=acc_dtype, device=acc_device)
    gaussian = gaussian_importance(patch, device=device, dtype=torch.float32)
    weight_sets = list(networks_weights) if networks_weights else [None]
    for state in weight_sets:
        if state is not None:
            network.load_state_dict(state)
        for sl in slices:
            tile = volume[sl][None, None].to(device=device, dtype=torch.float32, non_blocking=True)
            with _autocast(device, amp_dtype):
                logits = forward_with_mirroring(network, tile, mirror_axes)[0]
            logits = logits.float()
            if binary:
                logits = logits[1:2] - logits[0:1]
            weighted = logits.mul_(gaussian)
            acc[(slice(None), *sl)] += weighted.to(device=acc_device, dtype=acc_dtype)
            del tile, logits, weighted
            if on_tile is not None:
                on_tile()
    inner = tuple(slice(b, s - a) for (b, a), s in zip(pads, padded_shape))
    acc = acc[(slice(None), *inner)]
    labels = torch.empty(acc.shape[1:], dtype=torch.uint8, device=acc_device)
    rows = max(1, (1 << 22) // max(acc.shape[2] * acc.shape[3], 1))
    for z0 in range(0, acc.shape[1], rows):
        block = acc[:, z0:z0 + rows]
        if binary:
            labels[z0:z0 + rows] = (block[0] > 0).to(torch.uint8)
        else:
            labels[z0:z0 + rows] = block.argmax(0).to(torch.uint8)
    del acc
    return labels


def nearest_indices(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """Source index of each output position for a nearest-neighbour resize with pixel centres
    aligned (torch's "nearest-exact")."""
    idx = torch.floor((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out)).long()
    return idx.clamp_(0, n_in - 1).to(device)


def upsample_labels(labels: torch.Tensor, out_shape: Sequence[int],
                    transpose_backward: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """Nearest-neighbour resize of a (d, h, w) label map in network axis order to `out_shape`
    (the image's axis order), with the network's axis transpose folded in: a C-contiguous uint8
    array, ready to be written. Source indices are torch's "nearest-exact" (`nearest_indices`,
    pixel centres aligned); the map is gathered on the CPU (it is small at network resolution)
    as whole-volume copies — rows of (z, y) pairs, then the columns."""
    small = labels.to("cpu", torch.uint8).numpy().transpose(tuple(transpose_backward))
    d, h, w = small.shape
    od, oh, ow = (int(s) for s in out_shape)
    iz, iy, ix = (nearest_indices(n, o).numpy() for n, o in ((d, od), (h, oh), (w, ow)))
    rows = np.ascontiguousarray(small).reshape(d * h, w)
    picked = rows[(iz[:, None] * h + iy[None, :]).ravel()]          # (od * oh, w): whole rows
    if ow == w and np.array_equal(ix, np.arange(w)):
        return picked.reshape(od, oh, ow)
    return np.take(picked, ix, axis=1).reshape(od, oh, ow)
