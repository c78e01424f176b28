"""Bad input gets one clear error, from the public function, the module and the raw C++ op."""
import pytest
import torch

import fusionseg_kernels as fk
from helpers import make_input, make_op_args

BACKENDS = ["reference", "cpu"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_must_be_5d(backend):
    args = make_op_args(16, 2)
    with pytest.raises(ValueError, match="5-D input"):
        fk.inception_dwconv3d(torch.randn(16, 4, 4, 4, dtype=torch.float64), *args, backend=backend)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.complex64, torch.bool])
def test_integer_complex_bool_inputs_rejected(dtype):
    args = make_op_args(16, 2)
    x = torch.zeros(1, 16, 3, 3, 3, dtype=dtype)
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        fk.inception_dwconv3d(x, *args, backend="cpu")


def test_too_few_channels_for_the_weights():
    with pytest.raises(ValueError, match="fewer than the 4 \\* gc = 16"):
        fk.inception_dwconv3d(make_input((1, 12, 3, 3, 3)), *make_op_args(16, 4), backend="cpu")


def test_weights_disagree_on_gc():
    args = make_op_args(16, 2)
    args[2] = torch.randn(3, 1, 1, 1, 11, dtype=torch.float64)
    with pytest.raises(ValueError, match="same number of channels gc"):
        fk.inception_dwconv3d(make_input((1, 16, 3, 3, 3)), *args, backend="cpu")


def test_even_kernel_rejected():
    args = make_op_args(16, 2)
    args[0] = torch.randn(2, 1, 2, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="kernel sizes must be odd"):
        fk.inception_dwconv3d(make_input((1, 16, 3, 3, 3)), *args, backend="cpu")


def test_non_depthwise_weight_shape_rejected():
    args = make_op_args(16, 2)
    args[4] = torch.randn(2, 2, 1, 11, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="h_weight must have the shape of a depthwise"):
        fk.inception_dwconv3d(make_input((1, 16, 3, 3, 3)), *args, backend="cpu")


def test_bias_shape_rejected():
    args = make_op_args(16, 2)
    args[1] = torch.randn(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="cube_bias must have shape \\(2,\\)"):
        fk.inception_dwconv3d(make_input((1, 16, 3, 3, 3)), *args, backend="cpu")


def test_tensors_on_different_devices():
    args = make_op_args(16, 2)
    args[6] = args[6].to("meta")
    with pytest.raises(ValueError, match="d_weight is on meta but the input is on cpu"):
        fk.inception_dwconv3d(make_input((1, 16, 3, 3, 3)), *args, backend="cpu")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        fk.inception_dwconv3d(make_input((1, 16, 3, 3, 3)), *make_op_args(16, 2), backend="fast")


def test_cuda_backend_on_cpu_tensor_says_what_is_missing():
    with pytest.raises(fk.BackendUnavailableError, match="backend 'cuda'"):
        fk.inception_dwconv3d(make_input((1, 16, 3, 3, 3)), *make_op_args(16, 2), backend="cuda")


def test_module_checks_channels():
    m = fk.InceptionDWConv3d(32).double()
    with pytest.raises(ValueError, match="built for 32 channels, got an input with 16"):
        m(make_input((1, 16, 3, 3, 3)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(in_channels=0), "in_channels must be positive"),
    (dict(in_channels=16, cube_kernel_size=4), "cube_kernel_size must be odd"),
    (dict(in_channels=16, band_kernel_size=10), "band_kernel_size must be odd"),
    (dict(in_channels=16, band_shape="disk"), "band_shape must be 'strip' or 'plane'"),
    (dict(in_channels=16, branch_ratio=0.3), "branch_ratio must lie in"),
    (dict(in_channels=16, backend="gpu"), "unknown backend 'gpu'"),
])
def test_module_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fk.InceptionDWConv3d(**kwargs)


def test_raw_cpp_op_checks_arguments_too():
    # C++ users bypass the Python checks: the op itself must refuse with a sentence.
    args = make_op_args(16, 4)
    with pytest.raises(RuntimeError, match="fewer than the 4 \\* gc = 16"):
        torch.ops.fusionseg.inception_dwconv3d_forward(make_input((1, 12, 3, 3, 3)), *args)
    with pytest.raises(RuntimeError, match="expects a 5-D input"):
        torch.ops.fusionseg.inception_dwconv3d_forward(torch.randn(12, 3, 3, 3, dtype=torch.float64), *args)
    args = make_op_args(16, 2)
    args[0] = torch.randn(2, 1, 2, 3, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="kernel sizes must be odd"):
        torch.ops.fusionseg.inception_dwconv3d_forward(make_input((1, 16, 3, 3, 3)), *args)
