"""Fast mode's label upsampling: one whole-volume gather with the network's axis transpose folded
in gives what torch's "nearest-exact" interpolation of the transposed map gives, C-contiguous."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusionseg_kernels.inference.sliding_window import upsample_labels


@pytest.mark.parametrize("small, transpose, out_shape", [
    ((7, 20, 24), (0, 1, 2), (17, 51, 61)),
    ((7, 20, 24), (1, 0, 2), (20, 9, 33)),     # the image's axis order differs from the network's
    ((9, 11, 13), (2, 0, 1), (30, 5, 11)),     # down- and upsampled axes mixed
    ((5, 6, 7), (0, 1, 2), (5, 6, 7)),         # nothing to resize
])
def test_gather_equals_torch_nearest_exact(small, transpose, out_shape):
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, 4, small, dtype=np.uint8))
    transposed = labels.permute(*transpose).contiguous()
    expected = F.interpolate(transposed[None, None].float(), size=out_shape, mode="nearest-exact")[0, 0]
    got = upsample_labels(labels, out_shape, transpose)
    assert got.dtype == np.uint8 and got.flags.c_contiguous and got.shape == tuple(out_shape)
    assert np.array_equal(got, expected.to(torch.uint8).numpy())
