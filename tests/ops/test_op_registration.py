"""The C++ op pair as torch sees it: opcheck, fake/meta kernels, torch.compile, FLOP formula, autocast."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import fusionseg_kernels as fk
from tests.helpers import PLANE_KERNELS, make_input, make_op_args, rel_l2


def test_opcheck_forward_and_backward():
    x = make_input((2, 16, 4, 5, 6), requires_grad=True)
    args = make_op_args(16, 2, requires_grad=True)
    torch.library.opcheck(torch.ops.fusionseg.inception_dwconv3d_forward.default, (x, *args))
    args_no_bias = make_op_args(16, 2, bias=False, requires_grad=True)
    torch.library.opcheck(torch.ops.fusionseg.inception_dwconv3d_forward.default, (x, *args_no_bias))
    gy = make_input(x.shape, seed=3)
    w = [args[0], args[2], args[4], args[6]]
    torch.library.opcheck(torch.ops.fusionseg.inception_dwconv3d_backward.default,
                          (gy, x.detach(), *[t.detach() for t in w]))


def test_fake_tensor_and_meta_shapes():
    x = torch.empty(2, 24, 5, 6, 7, device="meta")
    margs = make_op_args(24, 3)
    margs = [a.to("meta") for a in margs]
    y = torch.ops.fusionseg.inception_dwconv3d_forward(x, *margs)
    assert y.device.type == "meta" and y.shape == x.shape
    xc = torch.empty(2, 24, 5, 6, 7, device="meta").contiguous(memory_format=torch.channels_last_3d)
    assert torch.ops.fusionseg.inception_dwconv3d_forward(xc, *margs).is_contiguous(
        memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph_matches_eager(dynamic):
    torch._dynamo.reset()
    module = fk.InceptionDWConv3d(32, backend="auto").double()
    x = make_input((1, 32, 5, 6, 7), requires_grad=True)
    compiled = torch.compile(module, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    y = compiled(x)
    y_eager = module(x)
    assert torch.equal(y, y_eager)
    (g_compiled,) = torch.autograd.grad(y.sum(), x)
    (g_eager,) = torch.autograd.grad(y_eager.sum(), x)
    assert torch.allclose(g_compiled, g_eager)


def test_torch_compile_inductor_function():
    torch._dynamo.reset()
    args = make_op_args(16, 2, dtype=torch.float32)

    def f(x):
        return fk.inception_dwconv3d(x, *args, backend="cpu") * 2 + 1

    x = make_input((1, 16, 4, 5, 6), dtype=torch.float32)
    compiled = torch.compile(f, fullgraph=True)
    assert torch.allclose(compiled(x), f(x))


def _four_conv_flops(x, args):
    gc = args[0].shape[0]
    identity = x.shape[1] - 4 * gc
    parts = torch.split(x, (identity, gc, gc, gc, gc), dim=1)
    with FlopCounterMode(display=False) as counter:
        for part, w in zip(parts[1:], args[0::2]):
            F.conv3d(part, w, padding=tuple(k // 2 for k in w.shape[2:]), groups=gc)
    return counter.get_total_flops()


@pytest.mark.parametrize("kernels", [None, PLANE_KERNELS])
def test_flop_formula_counts_like_four_convs(kernels):
    x = make_input((2, 24, 5, 6, 7))
    args = make_op_args(24, 3, kernels) if kernels else make_op_args(24, 3)
    expected = _four_conv_flops(x, args)
    with FlopCounterMode(display=False) as counter:
        fk.inception_dwconv3d(x, *args, backend="cpu")
    assert counter.get_total_flops() == expected > 0


def test_flop_formula_on_meta_device_and_backward():
    module = fk.InceptionDWConv3d(32).to("meta")
    x = torch.empty(1, 32, 96, 128, 128, device="meta", requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        y = module(x)
    forward = counter.get_total_flops()
    # 4 conv groups of 4 channels: (27 + 3 * 11) MACs per conv voxel, 2 FLOPs per MAC
    assert forward == 2 * 4 * (27 + 33) * 96 * 128 * 128
    with FlopCounterMode(display=False) as counter:
        y.sum().backward()
    assert counter.get_total_flops() == 2 * forward


@pytest.mark.parametrize("gc", [1, 2, 4])
def test_backward_flops_against_torchs_count_of_the_reference(gc):
    """The fused backward counts grad input + grad weight = 2x the forward. Torch counts a grouped
    convolution's weight gradient as a dense one (gc times too much), so the reference shows
    (1 + gc)x: the two agree exactly where torch's formula is right (gc = 1)."""
    C = 8 * gc
    counts = {}
    for backend in ("reference", "cpu"):
        x = make_input((1, C, 5, 6, 7), dtype=torch.float32, requires_grad=True)
        args = make_op_args(C, gc, dtype=torch.float32, requires_grad=True)
        with FlopCounterMode(display=False) as counter:
            y = fk.inception_dwconv3d(x, *args, backend=backend)
            forward = counter.get_total_flops()
            y.sum().backward()
        counts[backend] = (forward, counter.get_total_flops() - forward)
    (ref_fwd, ref_bwd), (fused_fwd, fused_bwd) = counts["reference"], counts["cpu"]
    assert ref_fwd == fused_fwd
    assert fused_bwd == 2 * fused_fwd
    assert ref_bwd == (1 + gc) * ref_fwd


def test_autocast_cpu_runs_in_autocast_dtype():
    x = make_input((1, 16, 4, 5, 6), dtype=torch.float32)
    args = make_op_args(16, 2, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fk.inception_dwconv3d(x, *args, backend="cpu")
    assert y.dtype == torch.bfloat16
    ref = fk.inception_dwconv3d_reference(x.double(), *[a.double() for a in args])
    assert rel_l2(y, ref) < 2e-2


def test_build_info_reports_configuration():
    info = fk.build_info()
    for key in ("torch_version", "openmp", "cuda_archs", "compiler", "extension_path"):
        assert key in info
    assert isinstance(info["cuda_archs"], list)
    assert info["torch_version"].split(".")[:2] == torch.__version__.split(".")[:2]


def test_fake_tensor_mode_forward_and_backward():
    from torch._subclasses.fake_tensor import FakeTensorMode

    real_args = make_op_args(16, 2, dtype=torch.float32)
    with FakeTensorMode() as mode:
        x = mode.from_tensor(make_input((2, 16, 4, 5, 6), dtype=torch.float32)).requires_grad_(True)
        args = [mode.from_tensor(a).requires_grad_(True) for a in real_args]
        y = torch.ops.fusionseg.inception_dwconv3d_forward(x, *args)
        grads = torch.autograd.grad(y.sum(), [x] + args)
    assert y.shape == x.shape
    assert [tuple(g.shape) for g in grads] == [tuple(x.shape)] + [tuple(a.shape) for a in real_args]
