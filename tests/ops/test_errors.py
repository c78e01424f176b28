"""Bad arguments: one sentence, the same exception type and the same words on every backend."""
from __future__ import annotations

import pytest
import torch

import fusionseg_kernels as fk
from tests.ops.error_cases import BAD_ARGUMENTS
from tests.helpers import make_input, make_op_args

# Every backend that can run on this machine's CPU tensors, plus the raw C++ op (what C++ users call).
BACKENDS = ["reference", "cpu", "auto", "raw C++ op"]


def _call(backend, x, args):
    if backend == "raw C++ op":
        return torch.ops.fusionseg.inception_dwconv3d_forward(x, *args)
    return fk.inception_dwconv3d(x, *args, backend=backend)


def _error(backend, case):
    build, _, _ = BAD_ARGUMENTS[case]
    x, args = build()
    with pytest.raises(Exception) as info:
        _call(backend, x, args)
    return info


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_arguments_fail_the_same_way_on_every_backend(case):
    _, exc_type, words = BAD_ARGUMENTS[case]
    errors = {}
    for backend in BACKENDS:
        if backend == "raw C++ op" and case in ("x_not_a_tensor", "weight_none", "bias_not_a_tensor"):
            continue  # the op's schema refuses non-tensors before any kernel runs
        info = _error(backend, case)
        assert info.type is exc_type, f"{backend}: {info.type.__name__}: {info.value}"
        message = str(info.value)
        assert words in message, f"{backend}: {message!r}"
        assert "\n" not in message.strip(), f"{backend}: more than one line: {message!r}"
        # No chained tracebacks: the error is raised directly, not re-raised while handling another.
        assert info.value.__context__ is None and info.value.__cause__ is None, backend
        errors[backend] = message.strip()
    assert len(set(errors.values())) == 1, errors


def test_zero_sized_inputs_give_empty_outputs_everywhere():
    for shape in ((0, 16, 3, 4, 5), (1, 16, 0, 4, 5), (2, 16, 3, 0, 5), (1, 16, 3, 4, 0)):
        x, args = make_input(shape), make_op_args(16, 2)
        for backend in ("reference", "cpu"):
            y = fk.inception_dwconv3d(x, *args, backend=backend)
            assert y.shape == x.shape and y.dtype == x.dtype, (backend, shape)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        fk.inception_dwconv3d(make_input((1, 16, 3, 3, 3)), *make_op_args(16, 2), backend="fast")


def test_cuda_backend_on_cpu_tensor_says_what_is_missing():
    with pytest.raises(fk.BackendUnavailableError, match="backend 'cuda'"):
        fk.inception_dwconv3d(make_input((1, 16, 3, 3, 3)), *make_op_args(16, 2), backend="cuda")


def test_explain_backend_on_a_non_tensor():
    with pytest.raises(TypeError, match="expects a tensor input, got list"):
        fk.explain_backend([1, 2])


def test_module_checks_channels():
    m = fk.InceptionDWConv3d(32).double()
    with pytest.raises(ValueError, match="built for 32 channels, got an input with 16"):
        m(make_input((1, 16, 3, 3, 3)))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(in_channels=0), ValueError, "in_channels must be positive"),
    (dict(in_channels=16.0), TypeError, "in_channels must be an int, got 16.0"),
    (dict(in_channels=True), TypeError, "in_channels must be an int"),
    (dict(in_channels=16, cube_kernel_size=3.0), TypeError, "cube_kernel_size must be an int, got 3.0"),
    (dict(in_channels=16, cube_kernel_size=4), ValueError, "cube_kernel_size must be odd"),
    (dict(in_channels=16, band_kernel_size=10), ValueError, "band_kernel_size must be odd"),
    (dict(in_channels=16, band_shape="disk"), ValueError, "band_shape must be 'strip' or 'plane'"),
    (dict(in_channels=16, branch_ratio=0.3), ValueError, "branch_ratio must lie in"),
    (dict(in_channels=16, branch_ratio="0.1"), TypeError, "branch_ratio must be a number"),
    (dict(in_channels=16, bias=1), TypeError, "bias must be True or False"),
    (dict(in_channels=16, backend="gpu"), ValueError, "unknown backend 'gpu'"),
])
def test_module_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fk.InceptionDWConv3d(**kwargs)
