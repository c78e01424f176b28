"""The Triton backend's kernels run on CPU tensors through the Triton interpreter.

Run in its own process: `TRITON_INTERPRET=1 pytest tests/interpreter` (conftest.py skips the
module otherwise). The shared conformance table runs in test_triton_conformance.py; this file
keeps what is specific to the Triton backend. Forward and every gradient are compared with the
float64 reference. The
interpreter costs about a millisecond per Triton operation whatever the block size, so the
shapes are small and odd and the single interpreter config (BLOCK_C=4, 8x16x16 voxels) makes
few programs; a few cases span several tiles on purpose.
"""
from __future__ import annotations

import pytest
import torch

from tests.helpers import (assert_matches_reference, backend_outputs, make_input, make_op_args, reference_outputs,
                           rel_l2)

from fusionseg_kernels import inception_dwconv3d
from fusionseg_kernels.ops.inception_dwconv3d import triton_impl

# RuntimeWarnings are errors: the interpreter computes every lane with numpy, so an overflow or
# invalid value there means a lane read memory it should not have (e.g. an unmasked load past
# a table), which on the GPU is an out-of-bounds access.
pytestmark = [pytest.mark.interpreter, pytest.mark.filterwarnings("error::RuntimeWarning")]


def triton_op(x, *args):
    return inception_dwconv3d(x, *args, backend="triton")


def test_interpreter_uses_one_fixed_config():
    assert triton_impl.INTERPRET
    assert len(triton_impl.CONFIGS) == 1
    assert triton_impl.available() == (True, "")


def test_several_tiles_in_every_axis():
    # 8x16x16 tiles: D=10, H=17, W=19 give 2 x 2 x 2 tiles per channel block.
    x = make_input((1, 6, 10, 17, 19), dtype=torch.float32)
    args = make_op_args(6, 1, dtype=torch.float32)
    assert_matches_reference(triton_op, x, args)


def test_other_kernel_sizes_and_volume_smaller_than_kernel():
    # 5x5x5 cube, strips of 7, 3 and 9 on a 3x4x2 volume: most taps fall in the padding.
    kernels = ((5, 5, 5), (1, 1, 7), (1, 3, 1), (9, 1, 1))
    x = make_input((2, 9, 3, 4, 2), dtype=torch.float32)
    args = make_op_args(9, 2, kernels=kernels, dtype=torch.float32)
    assert_matches_reference(triton_op, x, args)


def test_float32_weights_on_bfloat16_input_give_float32_grads():
    x = make_input((1, 8, 3, 4, 5), dtype=torch.bfloat16)
    args = make_op_args(8, 1, dtype=torch.float32)
    grad_y = make_input(x.shape, dtype=x.dtype, seed=7)
    y, grads = backend_outputs(triton_op, x, args, grad_y)
    assert y.dtype == torch.bfloat16 and grads[0].dtype == torch.bfloat16
    assert all(g.dtype == torch.float32 for g in grads[1:])
    # the weights are rounded to bf16 inside the op, as in the reference run on bf16 weights
    ref_args = [a.to(torch.bfloat16) for a in args]
    ref_y, _ = reference_outputs(x, ref_args, grad_y)
    assert rel_l2(y, ref_y) < 1e-2


def test_int64_offsets_path(monkeypatch):
    # Inputs of 2**31 elements do not fit the interpreter; force the 64-bit code path instead.
    monkeypatch.setattr(triton_impl, "_needs_int64", lambda *tensors: True)
    x = make_input((1, 9, 3, 5, 4), dtype=torch.float32)
    args = make_op_args(9, 2, dtype=torch.float32)
    assert_matches_reference(triton_op, x, args)


def test_needs_int64_threshold():
    small = torch.empty(2, 3, 4, 5, 6)
    assert not triton_impl._needs_int64(small)
    # an expanded (stride-0) view makes numel large without memory
    big = torch.empty(1).expand(2**31)
    assert triton_impl._needs_int64(big)
    # a span (largest offset) past 2**31 with few elements; meta tensors need no storage
    assert triton_impl._needs_int64(torch.empty(4, device="meta").as_strided((2, 2), (2**31, 1)))


def test_backward_op_returns_weight_and_bias_grads_directly():
    x = make_input((1, 8, 3, 4, 5), dtype=torch.float32)
    args = make_op_args(8, 1, dtype=torch.float32)
    grad_y = make_input(x.shape, dtype=x.dtype, seed=5)
    out = torch.ops.fusionseg.triton_inception_dwconv3d_backward(grad_y, x, args[0], args[2],
                                                                 args[4], args[6])
    _, ref = reference_outputs(x, args, grad_y)
    # reference grads: x, then (w, b) per group; the op returns x, four w, four b
    ref_order = [ref[0], ref[1], ref[3], ref[5], ref[7], ref[2], ref[4], ref[6], ref[8]]
    assert len(out) == 9
    for got, want in zip(out, ref_order):
        assert got.shape == want.shape
        assert rel_l2(got, want) < 1e-5
    # outputs are distinct tensors (custom ops must not return aliases)
    assert len({t.data_ptr() for t in out}) == 9


def test_run_kernels_with_a_given_config_matches_the_op():
    # the path bench_gpu_kernels.py --precompile uses to compile configs in parallel
    x = make_input((1, 9, 3, 5, 4), dtype=torch.float32)
    args = make_op_args(9, 2, dtype=torch.float32)
    gy = make_input(x.shape, dtype=x.dtype, seed=5)
    y, gx, gw, gb = triton_impl.run_kernels_with_config(x, args, gy, triton_impl.CONFIGS[0])
    ref_y, ref = reference_outputs(x, args, gy)
    assert rel_l2(y, ref_y) < 1e-5 and rel_l2(gx, ref[0]) < 1e-5
    for i in range(4):
        assert rel_l2(gw[i], ref[1 + 2 * i]) < 1e-5 and rel_l2(gb[i], ref[2 + 2 * i]) < 1e-5


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # hypothesis is a test extra; the fixed cases above still run
    given = None

if given is not None:
    _odd = st.sampled_from([1, 3, 5])

    @settings(max_examples=4, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(n=st.integers(1, 2), gc=st.integers(1, 3), identity=st.integers(0, 3),
           d=st.integers(1, 7), h=st.integers(1, 7), w=st.integers(1, 12),
           cube=_odd, band=st.sampled_from([1, 3, 7, 11]), bias=st.booleans())
    def test_random_shapes_and_kernels_match_reference(n, gc, identity, d, h, w, cube, band, bias):
        kernels = ((cube, cube, cube), (1, 1, band), (1, band, 1), (band, 1, 1))
        channels = identity + 4 * gc
        x = make_input((n, channels, d, h, w), dtype=torch.float32)
        args = make_op_args(channels, gc, kernels=kernels, dtype=torch.float32, bias=bias)
        assert_matches_reference(triton_op, x, args)


def test_partials_rows_unused_by_the_running_config_are_zeroed():
    """The autotuner runs several configs on one partials buffer, sized for the config with the
    most tiles: a config with fewer tiles must zero the rows it does not own; and the strip
    groups' slots past their bias are never written, so the second stage must not read them.
    Pre-fill the buffer with signaling NaNs (what uninitialised memory may hold: numpy warns on
    any arithmetic with one, which this module makes an error, while a quiet NaN in a discarded
    sum would pass silently), size it for a small-tile config, run the (large-tile) interpreter
    config."""
    import triton

    x = make_input((2, 9, 5, 6, 7), dtype=torch.float32)
    args = make_op_args(9, 2, dtype=torch.float32)
    gy = make_input(x.shape, dtype=x.dtype, seed=5)
    weights = tuple(args[0::2])
    cfg = triton_impl.CONFIGS[0]
    small = triton.Config({"BLOCK_C": 1, "BLOCK_D": 2, "BLOCK_H": 2, "BLOCK_W": 4}, num_warps=4)
    gx = torch.empty_like(x)
    launch, partials = triton_impl.backward_launch(gy, x, gx, weights, [cfg, small])
    # (conv channels, taps + 1, N * max tiles): the small config's 3 x 3 x 2 tiles
    assert partials.shape == (8, 28, 2 * 3 * 3 * 2)
    partials.view(torch.int32).fill_(0x7F800001)  # a signaling NaN's bits
    launch.jit_function[launch.grid](*launch.args, **launch.kwargs, **cfg.all_kwargs())
    launch, grad_w, grad_b = triton_impl.weight_grad_launch(partials, weights)
    launch.kernel[launch.grid](*launch.args, **launch.kwargs)
    _, ref = reference_outputs(x, args, gy)
    assert rel_l2(gx, ref[0]) < 1e-5
    for i in range(4):
        assert rel_l2(grad_w[i], ref[1 + 2 * i]) < 1e-5 and rel_l2(grad_b[i], ref[2 + 2 * i]) < 1e-5
