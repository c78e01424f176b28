"""The Triton op pair fusionseg::triton_inception_dwconv3d_{forward,backward} without the interpreter.

On any machine: fake-tensor and meta-device shapes/strides, autograd through the fake kernels,
FLOP formulas, torch.compile(fullgraph=True) tracing into the op (on meta tensors, where the
fake kernels run). With a CUDA GPU: torch.library.opcheck, accuracy of forward and every
gradient against the float64 reference in fp32/fp16/bf16, channels_last_3d, autocast,
determinism, torch.compile with Inductor, 64-bit offsets. The kernels' logic on the CPU is
tested by tests/interpreter (TRITON_INTERPRET=1, its own process).
"""
from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import requires_gpu
from tests.helpers import (PLANE_KERNELS, STRIP_KERNELS, assert_low_precision_close,
                     assert_matches_reference, backend_outputs, make_input, make_op_args, rel_l2)

triton = pytest.importorskip("triton", reason="the triton backend needs the triton package")

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("opcheck, fake, meta and torch.compile tests of the Triton op fail under "
                "TRITON_INTERPRET=1; run this file without it", allow_module_level=True)

from fusionseg_kernels import inception_dwconv3d, inception_dwconv3d_reference  # noqa: E402
from fusionseg_kernels.ops.inception_dwconv3d import triton_impl  # noqa: E402

FORWARD = torch.ops.fusionseg.triton_inception_dwconv3d_forward
BACKWARD = torch.ops.fusionseg.triton_inception_dwconv3d_backward


def _meta_args(shape, gc, kernels=STRIP_KERNELS, bias=True, dtype=torch.float32):
    x = make_input(shape, dtype=dtype).to("meta").requires_grad_()
    args = [None if a is None else a.to("meta").requires_grad_()
            for a in make_op_args(shape[1], gc, kernels=kernels, dtype=dtype, bias=bias)]
    return x, args


# ---------------------------------------------------------------- any machine


def test_ops_are_registered_with_fake_autograd_and_autocast():
    for name in ("triton_inception_dwconv3d_forward", "triton_inception_dwconv3d_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusionseg::{name}", "Meta")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(
        "fusionseg::triton_inception_dwconv3d_forward", "AutocastCUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(
        "fusionseg::triton_inception_dwconv3d_forward", "Autograd")


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_fake_forward_keeps_shape_dtype_and_layout(memory_format):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 12, 5, 7, 9, dtype=torch.bfloat16).to(memory_format=memory_format)
        args = [torch.empty(2, 1, *k) for k in STRIP_KERNELS]
        y = FORWARD(x, args[0], None, args[1], None, args[2], None, args[3], None)
        assert y.shape == x.shape and y.dtype == x.dtype and y.stride() == x.stride()
        grads = BACKWARD(y, x, *args)
        assert len(grads) == 9
        assert grads[0].shape == x.shape and grads[0].stride() == x.stride()
        for g, w in zip(grads[1:5], args):
            assert g.shape == w.shape and g.dtype == w.dtype and g.is_contiguous()
        for g, w in zip(grads[5:], args):
            assert g.shape == (w.shape[0],)


@pytest.mark.parametrize("kernels, bias", [(STRIP_KERNELS, True), (PLANE_KERNELS, False)])
def test_meta_forward_and_backward(kernels, bias):
    x, args = _meta_args((2, 12, 5, 7, 9), 2, kernels=kernels, bias=bias)
    y = FORWARD(x, *args)
    assert y.device.type == "meta" and y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    for a in args:
        if a is not None:
            assert a.grad is not None and a.grad.shape == a.shape


def test_flop_formulas_match_the_four_convolutions():
    from torch.utils.flop_counter import FlopCounterMode

    shape, gc = (2, 12, 5, 7, 9), 2
    x, args = _meta_args(shape, gc)
    with FlopCounterMode(display=False) as counter:
        FORWARD(x, *args).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    voxels = 5 * 7 * 9
    forward = 2 * shape[0] * voxels * gc * (27 + 11 + 11 + 11)
    assert counts[FORWARD] == forward
    assert counts[BACKWARD] == 2 * forward


def test_flops_equal_the_reference_convolutions():
    from torch.utils.flop_counter import FlopCounterMode

    x, args = _meta_args((1, 16, 4, 6, 8), 2, kernels=PLANE_KERNELS)
    with FlopCounterMode(display=False) as ours:
        FORWARD(x, *args)
    with FlopCounterMode(display=False) as ref:
        inception_dwconv3d_reference(x, *args)
    assert ours.get_total_flops() == ref.get_total_flops() > 0


def test_torch_compile_fullgraph_traces_the_op_on_meta_tensors():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def f(x, *args):
        return FORWARD(x, *args).relu() * 2

    compiled = torch.compile(f, backend=counter, fullgraph=True)
    x, args = _meta_args((1, 12, 5, 6, 7), 2)
    y = compiled(x, *args)
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape
    assert counter.frame_count == 1
    graph_ops = {str(n.target) for g in counter.graphs for n in g.graph.nodes}
    assert any("triton_inception_dwconv3d_forward" in op for op in graph_ops)


def test_public_function_with_backend_triton_traces_fullgraph(monkeypatch):
    """The public function (argument checks, backend check, the op) compiles in one graph.
    Meta tensors stand in for CUDA ones: the backend check is told the backend is usable."""
    from torch._dynamo.testing import CompileCounterWithBackend

    monkeypatch.setattr(triton_impl, "_AVAILABLE", (True, ""))
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # lets the backend check accept non-CUDA tensors
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(lambda x, *a: inception_dwconv3d(x, *a, backend="triton") + 1,
                             backend=counter, fullgraph=True)
    x, args = _meta_args((1, 12, 5, 6, 7), 2)
    y = compiled(x, *args)
    y.sum().backward()
    assert y.shape == x.shape and x.grad is not None and counter.frame_count == 1
    torch._dynamo.reset()


def test_aot_tracing_exposes_the_kernels_to_the_compiler():
    """Under functionalization (what Inductor sees) the triton_op decomposes into its kernels."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm)

    torch._dynamo.reset()
    compiled = torch.compile(lambda x, *a: FORWARD(x, *a),
                             backend=aot_autograd(fw_compiler=capture, bw_compiler=capture),
                             fullgraph=True)
    x, args = _meta_args((1, 12, 5, 6, 7), 2)
    compiled(x, *args).sum().backward()
    text = "\n".join(g.code for g in graphs)
    assert "triton_kernel_wrapper_functional" in text
    assert "triton_inception_dwconv3d" not in text  # decomposed, not an opaque call


def test_backend_triton_without_gpu_or_interpreter_says_why():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    x = make_input((1, 8, 3, 4, 5), dtype=torch.float32)
    args = make_op_args(8, 1, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        inception_dwconv3d(x, *args, backend="triton")


def test_autotune_configs_are_sane():
    configs = triton_impl._GPU_CONFIGS
    assert len(configs) > 1
    if triton_impl.AUTOTUNE:
        assert triton_impl.CONFIGS == configs
    for cfg in configs:
        kw = cfg.kwargs
        elements = kw["BLOCK_C"] * kw["BLOCK_D"] * kw["BLOCK_H"] * kw["BLOCK_W"]
        assert 256 <= elements <= 8192
        for v in kw.values():
            assert v & (v - 1) == 0  # powers of two (tl.arange)


# ---------------------------------------------------------------- GPU

def triton_fn(x, *args):
    return inception_dwconv3d(x, *args, backend="triton")


def _poison(monkeypatch):
    monkeypatch.setattr(triton_impl, "_empty_like", lambda t: torch.full_like(t, float("nan")))


GPU_SHAPES = [
    ((2, 16, 9, 17, 33), 2, STRIP_KERNELS),
    ((1, 40, 7, 13, 70), 5, STRIP_KERNELS),
    ((2, 64, 6, 4, 4), 8, STRIP_KERNELS),      # deep layer: volume smaller than a tile
    ((1, 24, 5, 9, 11), 3, PLANE_KERNELS),
    ((1, 7, 3, 5, 6), 0, STRIP_KERNELS),
]


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("shape, gc, kernels", GPU_SHAPES)
def test_gpu_float32_matches_reference(shape, gc, kernels, monkeypatch):
    _poison(monkeypatch)
    x = make_input(shape, dtype=torch.float32, device="cuda")
    args = make_op_args(shape[1], gc, kernels=kernels, dtype=torch.float32, device="cuda")
    if gc == 0:
        y = triton_fn(x, *args)
        assert torch.equal(y, x)
        return
    assert_matches_reference(triton_fn, x, args)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_low_precision(dtype, monkeypatch):
    _poison(monkeypatch)
    x = make_input((2, 32, 8, 16, 20), dtype=dtype, device="cuda")
    args = make_op_args(32, 4, dtype=dtype, device="cuda")
    assert_low_precision_close(triton_fn, x, args)


@pytest.mark.gpu
@requires_gpu
def test_gpu_opcheck():
    x = make_input((2, 16, 5, 7, 9), dtype=torch.float32, device="cuda", requires_grad=True)
    args = make_op_args(16, 2, dtype=torch.float32, device="cuda", requires_grad=True)
    torch.library.opcheck(FORWARD, (x, *args))
    args_nb = make_op_args(16, 2, dtype=torch.float32, device="cuda", bias=False,
                           requires_grad=True)
    torch.library.opcheck(FORWARD, (x, *args_nb))
    gy = make_input(x.shape, dtype=torch.float32, device="cuda")
    torch.library.opcheck(BACKWARD, (gy, x.detach(), args[0].detach(), args[2].detach(),
                                     args[4].detach(), args[6].detach()))


@pytest.mark.gpu
@requires_gpu
def test_gpu_autocast_runs_in_autocast_dtype():
    x = make_input((1, 16, 5, 6, 7), dtype=torch.float32, device="cuda", requires_grad=True)
    args = make_op_args(16, 2, dtype=torch.float32, device="cuda", requires_grad=True)
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            y = triton_fn(x, *args)
        assert y.dtype == dtype
        y.float().sum().backward()
        assert x.grad.dtype == torch.float32 and args[0].grad.dtype == torch.float32
        x.grad = None
        for a in args:
            a.grad = None


@pytest.mark.gpu
@requires_gpu
def test_gpu_inductor_compile_matches_eager():
    torch._dynamo.reset()
    x = make_input((2, 16, 6, 12, 20), dtype=torch.float32, device="cuda")
    args = make_op_args(16, 2, dtype=torch.float32, device="cuda")

    def f(x, *a):
        return inception_dwconv3d(x, *a, backend="triton").relu()

    compiled = torch.compile(f, fullgraph=True)
    gy = make_input(x.shape, dtype=torch.float32, device="cuda", seed=9)
    y_c, g_c = backend_outputs(compiled, x, args, gy)
    y_e, g_e = backend_outputs(f, x, args, gy)
    assert rel_l2(y_c, y_e) < 1e-6
    for a, b in zip(g_c, g_e):
        assert rel_l2(a, b) < 1e-6


@pytest.mark.gpu
@requires_gpu
def test_gpu_int64_offsets_on_a_2_pow_31_element_input():
    free, _ = torch.cuda.mem_get_info()
    if free < 12 * 2**30:
        pytest.skip("needs 12 GiB of free GPU memory")
    D = 1024
    x = torch.randn(1, 8, D, 512, 512, dtype=torch.bfloat16, device="cuda")
    assert x.numel() >= 2**31
    args = make_op_args(8, 1, dtype=torch.bfloat16, device="cuda")
    y = triton_fn(x, *args)
    # the last 6 d-planes, from an input cropped to the last 12 (enough for the 11-long band)
    ref = inception_dwconv3d_reference(x[:, :, D - 12:].double(), *[a.double() for a in args])
    assert rel_l2(y[:, :, D - 6:], ref[:, :, 6:]) < 1e-2
    del x, y
    torch.cuda.empty_cache()


@pytest.mark.slow
def test_kernels_compile_for_hopper_and_ada_with_the_launchers_specialization():
    """Triton's compiler (not the interpreter) accepts all three kernels for an odd-sized call
    (W = 70, not a multiple of 16; 5 channels per group), compiled for sm_89 with exactly the
    signature, divisibility attributes and constexprs the launcher derives from the real
    arguments (bench/gpu_static.py's compile path, no GPU needed). The forward and the
    weight-gradient stage use no local memory; the backward on such unaligned rows (element-wise
    loads) may spill a little (docs/triton.md), the network's aligned calls do not
    (tests/ops/test_gpu_static.py)."""
    from bench import gpu_static as gs
    [entry] = gs.triton_kernels("sm_89", "fp16", [((1, 40, 7, 13, 70), 5, 1)], {}, log=lambda *a: None)
    assert entry["forward"] and entry["backward"]
    for k in entry["forward"] + [b["weight_grad"] for b in entry["backward"]]:
        assert k["registers"] > 0 and k["spill_bytes"] == 0 and k["stack_bytes"] == 0
    for b in entry["backward"]:
        assert 0 < b["kernel"]["registers"] <= 255 and b["kernel"]["spill_bytes"] < 256
    # W = 70 and H * W are not multiples of 16: the launcher does not claim divisibility
    for f in entry["forward"]:
        assert not {"W", "sxh", "sxd"} & set(f["specialized"])  # 70, 70, 910
        assert {"x_ptr", "y_ptr", "sxn"} <= set(f["specialized"])  # sxn = 40 * 7 * 13 * 70 = 16 * 15925


def _load_bench():
    from bench import bench_gpu_kernels

    return bench_gpu_kernels


def test_gpu_table_records_the_fastest_backend_that_passed(tmp_path, monkeypatch):
    import json

    bench = _load_bench()
    table = tmp_path / "gpu_table.json"
    monkeypatch.setattr(bench, "GPU_TABLE", table)

    def row(provider, ms, x_bytes, mode="fwdbwd", ok=True, shape=(2, 16, 8, 8, 8)):
        return {"dtype": "bf16", "mode": mode, "shape": list(shape), "gc": 2, "calls": 1,
                "provider": provider, "x_bytes": x_bytes, "ms": ms, "ok": ok}

    big, small = 100 << 20, 1 << 20
    rows = [row("reference", 10.0, big), row("triton", 2.0, big), row("cuda", 1.0, big),
            row("reference", 1.0, small, shape=(2, 8, 4, 4, 4)),
            row("triton", 0.5, small, shape=(2, 8, 4, 4, 4), ok=False),  # wrong result: never recorded
            row("cuda", 2.0, small, shape=(2, 8, 4, 4, 4)),
            row("triton", 0.1, big, mode="fwd")]  # fwd+bwd is preferred when measured
    result = tmp_path / "sweep.json"
    result.write_text(json.dumps({"meta": {"device_name": "NVIDIA H100", "commit": "abc",
                                           "date_utc": "now"}, "rows": rows}))
    # cuda's GPU tests failed: only triton (and the reference) may be recorded
    entries = bench.write_gpu_table(result, ["triton"])
    got = {(e["size_class"], e["backend"]) for e in entries}
    assert got == {("large", "triton"), ("small", "reference")}
    saved = json.loads(table.read_text())["entries"]
    assert {k for e in saved for k in e} >= {"device_name", "dtype", "size_class", "backend"}
    assert all(e["device_name"] == "NVIDIA H100" and e["dtype"] == "bfloat16" for e in saved)
    # Round trip: what the writer recorded is what `auto` reads, under the same key function.
    from fusionseg_kernels.ops.inception_dwconv3d import dispatch

    monkeypatch.setattr(dispatch, "GPU_TABLE_PATH", table)
    dispatch.clear_backend_cache()
    try:
        read = dispatch._gpu_table()
        assert read[dispatch.gpu_table_key("NVIDIA H100", torch.bfloat16, big)] == "triton"
        assert read[dispatch.gpu_table_key("NVIDIA H100", "bf16", small)] == "reference"
        assert dispatch.gpu_table_key("NVIDIA H100", torch.float32, big) not in read
    finally:
        monkeypatch.undo()
        dispatch.clear_backend_cache()


def test_layer_shapes_cover_the_28_calls():
    bench = _load_bench()
    shapes = bench.layer_shapes(batch=2)
    assert sum(calls for _, _, calls in shapes) == 28
    assert shapes[0][0] == (2, 32, 96, 128, 128)  # largest first
    assert all(s[0] == 2 and s[1] == 8 * gc for s, gc, _ in shapes)
