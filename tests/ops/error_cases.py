"""One table of bad arguments for inception_dwconv3d, fed to every backend by tests/ops/test_errors.py
(and, for the Triton backend, by the interpreter suite): each case must raise the same exception
type with the same sentence on all of them."""
from __future__ import annotations

import torch

from tests.helpers import make_input, make_op_args


def _case(shape=(1, 16, 3, 3, 3), channels=16, gc=2, x_dtype=torch.float64):
    return make_input(shape).to(x_dtype), make_op_args(channels, gc)


def _with(index, value, **kw):
    x, args = _case(**kw)
    args[index] = value(args[index]) if callable(value) else value
    return x, args


# id -> (builder returning (x, eight weight/bias arguments), exception type, words the message has)
BAD_ARGUMENTS = {
    "x_4d": (lambda: _case(shape=(16, 3, 3, 3)), ValueError, "5-D input"),
    "x_int64": (lambda: _case(x_dtype=torch.int64), TypeError, "got torch.int64"),
    "x_bool": (lambda: _case(x_dtype=torch.bool), TypeError, "got torch.bool"),
    "x_complex": (lambda: _case(x_dtype=torch.complex64), TypeError, "got torch.complex64"),
    "x_float8": (lambda: _case(x_dtype=torch.float8_e4m3fn), TypeError, "got torch.float8_e4m3fn"),
    "x_not_a_tensor": (lambda: ([[1.0]], make_op_args(16, 2)), TypeError, "tensor input x, got list"),
    "too_few_channels": (lambda: _case(shape=(1, 12, 3, 3, 3), gc=4), ValueError, "fewer than the 4 * gc = 16"),
    "gc_disagrees": (lambda: _with(2, torch.randn(3, 1, 1, 1, 11, dtype=torch.float64)), ValueError,
                     "cube_weight has 2 but w_weight has 3"),
    "even_kernel": (lambda: _with(0, torch.randn(2, 1, 2, 3, 3, dtype=torch.float64)), ValueError,
                    "cube_weight has kernel [2, 3, 3]"),
    "not_depthwise": (lambda: _with(4, torch.randn(2, 2, 1, 11, 1, dtype=torch.float64)), ValueError,
                      "h_weight must have the shape of a depthwise Conv3d weight (gc, 1, kd, kh, kw), "
                      "got shape [2, 2, 1, 11, 1]"),
    "weight_int": (lambda: _with(6, lambda w: w.to(torch.int32)), TypeError, "d_weight must be float32"),
    "weight_on_meta": (lambda: _with(6, lambda w: w.to("meta")), ValueError,
                       "d_weight is on meta but the input is on cpu"),
    "weight_none": (lambda: _with(0, None), TypeError, "cube_weight must be a tensor, got NoneType"),
    "bias_shape": (lambda: _with(1, torch.randn(3, dtype=torch.float64)), ValueError,
                   "cube_bias must have shape [2], got shape [3]"),
    "bias_int": (lambda: _with(3, lambda b: b.to(torch.int64)), TypeError, "w_bias must be float32"),
    "bias_not_a_tensor": (lambda: _with(5, [0.0, 0.0]), TypeError, "h_bias must be a tensor or None, got list"),
}
