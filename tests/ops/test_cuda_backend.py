"""The CUDA backend of inception_dwconv3d (csrc/ops/cuda/inception_dwconv3d_kernel.cu).

GPU tests compare the forward output and every gradient with the float64 reference (tolerance
table in helpers.py) and skip, saying why, on machines without a CUDA GPU or without the
CUDA kernels built. Host-side tests run everywhere: the error a user gets when the backend
cannot run, and what the extension reports about its CUDA build.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fusionseg_kernels import (BackendUnavailableError, build_info,
                               extension_available, inception_dwconv3d,
                               inception_dwconv3d_reference)
from fusionseg_kernels._extension import has_cuda_kernels
from tests.helpers import assert_matches_reference, backend_outputs, make_input, make_op_args, rel_l2

ROOT = Path(__file__).resolve().parents[2]
FORWARD_OP = "fusionseg::inception_dwconv3d_forward"
BACKWARD_OP = "fusionseg::inception_dwconv3d_backward"


def _cuda_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU; none on this machine"
    if not extension_available():
        return "the fusionseg C++ extension is not built"
    if not has_cuda_kernels():
        return "the fusionseg extension was built without CUDA kernels (no CUDA toolkit at build time)"
    return None


_REASON = _cuda_skip_reason()
requires_cuda_kernels = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def cuda_op(x, *args):
    return inception_dwconv3d(x, *args, backend="cuda")


@pytest.fixture(autouse=True)
def _no_tf32():
    """float32 conformance checks run cuDNN without TF32 (the reference side)."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = saved


# Odd kernel sizes that exercise the generic (run-time size) path besides the plane variant.
ODD_KERNELS = ((5, 5, 5), (1, 1, 7), (1, 7, 1), (7, 1, 1))
MIXED_KERNELS = ((3, 3, 3), (1, 1, 11), (1, 11, 1), (9, 1, 1))  # one group off the strip sizes

# Forward and gradient conformance over the shared case table is in tests/ops/test_conformance.py;
# this file keeps what is specific to the CUDA backend.


# ----------------------------------------------------------------------------- host side
# These run on every machine: they check what a user sees when the CUDA backend is missing
# or cannot take the tensors it is given.

@pytest.mark.skipif(not extension_available(), reason="the fusionseg C++ extension is not built")
def test_cuda_backend_on_cpu_tensor_raises_clear_error():
    x = make_input((1, 16, 3, 4, 5), dtype=torch.float32)
    args = make_op_args(16, 2, dtype=torch.float32)
    with pytest.raises(BackendUnavailableError) as err:
        inception_dwconv3d(x, *args, backend="cuda")
    msg = str(err.value)
    if has_cuda_kernels():
        assert "needs CUDA tensors" in msg and "cpu" in msg
    else:
        assert "not built" in msg and "pip install --no-build-isolation" in msg


@pytest.mark.skipif(not extension_available(), reason="the fusionseg C++ extension is not built")
def test_cuda_kernel_registered_iff_built_with_cuda():
    info = build_info()
    has_cuda_key = torch._C._dispatch_has_kernel_for_dispatch_key(FORWARD_OP, "CUDA")
    has_cuda_bwd = torch._C._dispatch_has_kernel_for_dispatch_key(BACKWARD_OP, "CUDA")
    assert has_cuda_key == has_cuda_bwd == bool(info["cuda_archs"])
    if info["cuda"] is None:
        assert info["cuda_archs"] == [] and info["cuda_version"] is None
    else:
        assert info["cuda_archs"] and all(isinstance(a, int) and a >= 50 for a in info["cuda_archs"])
        assert info["cuda_archs"] == sorted(info["cuda_archs"])
        major, minor = info["cuda_version"].split(".")
        assert int(major) >= 11 and int(minor) >= 0


def _cuda_build_libraries():
    """CUDA-enabled operator libraries built in a CMake folder of this checkout (docs/cuda.md)."""
    return sorted((ROOT / "build").glob("cmake*/libfusionseg_ops.so"))


@pytest.mark.parametrize("lib", _cuda_build_libraries() or [None], ids=lambda p: str(p and p.parent.name))
def test_cmake_cuda_library_loads_and_reports_archs(lib):
    """A library built with CMake and CUDA loads on a machine without a GPU, registers the CUDA
    kernels and reports its architectures; the CPU kernel in it still works. Runs in its own
    process: loading two copies of the library into one process would register the op twice."""
    if lib is None:
        pytest.skip("no CMake build folder with libfusionseg_ops.so under build/ (see docs/cuda.md)")
    code = textwrap.dedent(f"""
        import json, torch
        torch.ops.load_library({str(lib)!r})
        info = json.loads(torch.ops.fusionseg.build_info())
        has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key({FORWARD_OP!r}, "CUDA")
        x = torch.randn(1, 8, 3, 4, 5, dtype=torch.float64)
        w = [torch.randn(1, 1, *k, dtype=torch.float64) for k in ((3, 3, 3), (1, 1, 11), (1, 11, 1), (11, 1, 1))]
        y = torch.ops.fusionseg.inception_dwconv3d_forward(x, w[0], None, w[1], None, w[2], None, w[3], None)
        identity_ok = bool((y[:, :4] == x[:, :4]).all())
        print(json.dumps({{"cuda": info["cuda"], "has_cuda": has_cuda, "identity_ok": identity_ok}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["identity_ok"]
    if res["cuda"] is None:
        assert not res["has_cuda"]
    else:
        assert res["has_cuda"]
        assert res["cuda"]["archs"], "a CUDA build must list the architectures it compiled"


def test_sanitize_script_dry_run_on_cpu():
    """bench/sanitize_cuda.py (wrapped by compute-sanitizer on the GPU machine) checks its
    cases against the float64 reference; its CPU dry run exercises the same logic here."""
    if not extension_available():
        pytest.skip("the fusionseg C++ extension is not built")
    out = subprocess.run([sys.executable, "-m", "bench.sanitize_cuda", "--device", "cpu"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "all cases match" in out.stdout


def test_sanitize_script_fails_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the script runs its cases instead")
    out = subprocess.run([sys.executable, "-m", "bench.sanitize_cuda"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode != 0 and "no CUDA GPU" in (out.stdout + out.stderr)


# ----------------------------------------------------------------------------- GPU

@pytest.mark.parametrize("kernels", [ODD_KERNELS, MIXED_KERNELS], ids=["odd", "mixed"])
@pytest.mark.gpu
@requires_cuda_kernels
def test_generic_kernel_sizes(kernels):
    x = make_input((2, 19, 11, 13, 35), dtype=torch.float32, device="cuda")
    args = make_op_args(19, 4, kernels=kernels, dtype=torch.float32, device="cuda")
    assert_matches_reference(cuda_op, x, args)


@pytest.mark.gpu
@requires_cuda_kernels
def test_weights_in_another_dtype_are_cast_to_x_dtype():
    x = make_input((1, 16, 5, 6, 7), dtype=torch.float16, device="cuda")
    args = make_op_args(16, 2, dtype=torch.float32, device="cuda")
    y = cuda_op(x, *args)
    ref = inception_dwconv3d_reference(x.double(), *[a.half().double() for a in args])
    assert y.dtype == torch.float16
    assert rel_l2(y, ref) < 2e-3


@pytest.mark.gpu
@requires_cuda_kernels
def test_matches_cpu_backend():
    """Forward and every gradient of the CUDA and CPU kernels agree (float64, both fused)."""
    x = make_input((1, 40, 9, 14, 21), dtype=torch.float64)
    args = make_op_args(40, 5, dtype=torch.float64)
    gy = make_input(x.shape, dtype=torch.float64, seed=5)
    y_cpu, g_cpu = backend_outputs(lambda x, *a: inception_dwconv3d(x, *a, backend="cpu"), x, args, gy)
    y_gpu, g_gpu = backend_outputs(cuda_op, x.cuda(), [a.cuda() for a in args], gy.cuda())
    assert rel_l2(y_gpu, y_cpu) < 1e-12
    assert len(g_gpu) == len(g_cpu) == 9
    for a, b in zip(g_gpu, g_cpu):
        assert rel_l2(a, b) < 1e-12


@pytest.mark.gpu
@requires_cuda_kernels
def test_runs_on_current_stream_and_device_guard():
    """The kernels run on the caller's current stream: on a side stream, x is overwritten after a
    long sleep and the op follows on the same stream. A kernel launched on the default stream
    instead would read x before the overwrite (no synchronization orders it) and return the
    result for the old values."""
    x = make_input((1, 16, 6, 7, 8), dtype=torch.float32, device="cuda")
    new = make_input(x.shape, dtype=torch.float32, device="cuda", seed=9)
    args = make_op_args(16, 2, dtype=torch.float32, device="cuda")
    expected_old, expected_new = cuda_op(x, *args), cuda_op(new, *args)
    assert not torch.equal(expected_old, expected_new)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time on s
        x.copy_(new)
        y = cuda_op(x, *args)
        grads = torch.ops.fusionseg.inception_dwconv3d_backward(new, x, *args[0::2])
    torch.cuda.synchronize()
    assert torch.equal(y, expected_new)
    ref_grads = torch.ops.fusionseg.inception_dwconv3d_backward(new, new, *args[0::2])
    for a, b in zip(grads, ref_grads):
        assert torch.equal(a, b)
    if torch.cuda.device_count() > 1:  # the device guard: tensors on device 1, current device 0
        x1 = new.to("cuda:1")
        y1 = cuda_op(x1, *[a.to("cuda:1") for a in args])
        assert y1.device == x1.device and torch.equal(y1.cpu(), expected_new.cpu())


@pytest.mark.gpu
@requires_cuda_kernels
def test_autocast_runs_in_half():
    x = make_input((1, 16, 5, 6, 7), dtype=torch.float32, device="cuda")
    args = make_op_args(16, 2, dtype=torch.float32, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        y = torch.ops.fusionseg.inception_dwconv3d_forward(x, *args)
    assert y.dtype == torch.float16
    ref = inception_dwconv3d_reference(x.double(), *args)
    assert rel_l2(y, ref) < 5e-3


@pytest.mark.gpu
@requires_cuda_kernels
def test_opcheck():
    x = make_input((1, 16, 4, 5, 13), dtype=torch.float32, device="cuda", requires_grad=True)
    args = make_op_args(16, 2, dtype=torch.float32, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.fusionseg.inception_dwconv3d_forward, (x, *args))


@pytest.mark.gpu
@requires_cuda_kernels
def test_poison_mode_outputs_fully_written():
    """With FUSIONSEG_POISON_OUTPUTS=1 outputs are NaN-filled before the kernels run (read once
    per process, hence the subprocess): any element a kernel forgets stays NaN."""
    code = textwrap.dedent("""
        import torch
        from tests.helpers import assert_matches_reference, make_input, make_op_args, PLANE_KERNELS, STRIP_KERNELS
        from fusionseg_kernels import inception_dwconv3d
        torch.backends.cudnn.allow_tf32 = False
        fn = lambda x, *a: inception_dwconv3d(x, *a, backend="cuda")
        for shape, gc in (((2, 20, 5, 11, 37), 3), ((1, 9, 17, 19, 33), 2), ((1, 13, 3, 2, 5), 1)):
            for kernels in (STRIP_KERNELS, PLANE_KERNELS):
                for dtype in (torch.float32, torch.float64):
                    x = make_input(shape, dtype=dtype, device="cuda")
                    args = make_op_args(shape[1], gc, kernels=kernels, dtype=dtype, device="cuda")
                    assert_matches_reference(fn, x, args)
        print("poison ok")
    """)
    env = dict(os.environ, FUSIONSEG_POISON_OUTPUTS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0 and "poison ok" in out.stdout, out.stderr[-3000:]


@pytest.mark.gpu
@requires_cuda_kernels
def test_network_sized_shape():
    """A full-resolution layer of the released network (tests/data/idc_layer_shapes.json), batch 2,
    against the float64 reference computed on the GPU (the CPU reference would take minutes)."""
    shape, gc = (2, 32, 96, 128, 128), 4
    x = make_input(shape, dtype=torch.float32, device="cuda")
    args = make_op_args(32, gc, dtype=torch.float32, device="cuda")
    gy = make_input(shape, dtype=torch.float32, device="cuda", seed=5)
    x64 = x.double().requires_grad_(True)
    a64 = [a.double().requires_grad_(True) for a in args]
    ref = inception_dwconv3d_reference(x64, *a64)
    ref_grads = torch.autograd.grad(ref, [x64, *a64], gy.double())
    xf = x.detach().requires_grad_(True)
    af = [a.detach().requires_grad_(True) for a in args]
    y = cuda_op(xf, *af)
    grads = torch.autograd.grad(y, [xf, *af], gy)
    assert rel_l2(y, ref) < 1e-5
    for g, r in zip(grads, ref_grads):
        assert rel_l2(g, r) < 1e-5


@pytest.mark.gpu
@requires_cuda_kernels
def test_too_large_kernel_is_refused_with_a_message():
    # A 63^3 float64 cube kernel needs ~2.5 MB of shared memory per block even in the smallest
    # tile: no GPU has that, and the op must say so instead of launching.
    x = make_input((1, 4, 4, 4, 4), dtype=torch.float64, device="cuda")
    k = ((63, 63, 63), (1, 1, 3), (1, 3, 1), (3, 1, 1))
    args = make_op_args(4, 1, kernels=k, dtype=torch.float64, device="cuda")
    with pytest.raises(RuntimeError, match="shared memory"):
        cuda_op(x, *args)
