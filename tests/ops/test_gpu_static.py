"""What the compiler makes of the GPU kernels, checked without a GPU (bench/gpu_static.py).

Triton: the forward and backward kernels compiled by Triton's real compiler for sm_90 and
sm_89 with the specialization the launcher derives for a real call (the launcher's own
argument helpers on meta tensors, the configs its autotuner would time after pruning). CUDA:
the cubins of the built library. Checked: no spills, no stack frame and no local memory in any
forward or backward kernel; 128-bit global loads and stores in the forward kernels when the
layout is 16-byte aligned; the weight-gradient stage runs more than one program per SM.
A compile takes 5-30 s on a loaded 2-core machine: by default a subset (both architectures,
each dtype, every width class with each of its configs); FUSIONSEG_GPU_STATIC_FULL=1 adds every
call x dtype x arch.
Triton's on-disk cache makes reruns fast.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiles with Triton's real compiler: run without TRITON_INTERPRET=1",
                allow_module_level=True)
triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


from bench import gpu_static as gs  # noqa: E402
from fusionseg_kernels.ops.inception_dwconv3d import triton_impl as ti  # noqa: E402

CALLS = gs.layer_calls(batch=2)  # the network's distinct calls at batch 2, largest first
BIG = CALLS[0]                   # (2, 32, 96, 128, 128): W = 128
MID = next(c for c in CALLS if c[0][-1] == 64)
SMALL = next(c for c in CALLS if c[0][-1] == 8)
W32 = next(c for c in CALLS if c[0][-1] == 32)
W16 = next(c for c in CALLS if c[0][-1] == 16)
# (arch, dtype, call): every arch, every dtype, every width class (so every config the launcher
# has), each config of the class compiled; float32 for the narrow classes, whose backward holds
# the most registers (a 1024-element W = 16 tile once spilled there, on sm_89 only)
SUBSET = [("sm_90", "bf16", BIG), ("sm_89", "fp16", MID), ("sm_90", "fp32", W32), ("sm_89", "fp32", W16),
          ("sm_90", "fp32", SMALL)]
FULL = [(a, d, c) for a in ("sm_89", "sm_90") for d in ("fp32", "fp16", "bf16") for c in CALLS
        if (a, d, c) not in SUBSET]


@pytest.fixture(scope="module")
def cache():
    return {}


def _compile_call(arch, dtype, call, cache, first_only=False):
    [entry] = gs.triton_kernels(arch, dtype, [call], cache, log=lambda *a: None,
                                first_config_only=first_only)
    return entry


def _id(p):
    arch, dtype, call = p
    return f"{arch}-{dtype}-{'x'.join(map(str, call[0]))}"


def _check_no_local_memory(name, k):
    assert k["spill_bytes"] == 0, f"{name}: {k['spill_bytes']} bytes of local-memory stores (spills)"
    assert k["stack_bytes"] == 0, f"{name}: {k['stack_bytes']}-byte stack frame"
    assert k["local_bytes"] == 0 and k["ldl"] == 0, f"{name}: local memory in use"


def _aligned(call, dtype):
    """16-byte rows: contiguous NCDHW with W a multiple of 16 bytes (and so are the other strides)."""
    elt = torch.empty((), dtype=gs.DTYPES[dtype]).element_size()
    return (call[0][-1] * elt) % 16 == 0 and (call[0][-1] * call[0][-2] * elt) % 64 == 0


def _check_triton(arch, dtype, call, cache, first_only=False):
    entry = _compile_call(arch, dtype, call, cache, first_only)
    assert entry["forward"] and entry["backward"], "the launcher would try no config"
    for f in entry["forward"]:
        name = f"triton forward {arch} {dtype} {f['config']}"
        _check_no_local_memory(name, f)
        # the launcher's specialization: D, H, W (multiples of 16 here) and the row strides
        # are known to be divisible by 16, which is what allows vector access
        if _aligned(call, dtype) and call[0][-1] % 16 == 0:
            sizes = {n for n, v in zip("DHW", call[0][2:]) if v % 16 == 0}
            assert sizes | {"sxh", "syh"} <= set(f["specialized"]), f["specialized"]
            bits = f["global_access_bits"]
            assert bits["128"] > 0, f"{name}: no 128-bit global access ({bits})"
    for b in entry["backward"]:
        _check_no_local_memory(f"triton backward {arch} {dtype} {b['config']}", b["kernel"])
        wg = b["weight_grad"]
        _check_no_local_memory(f"triton weight grad {arch} {dtype}", wg)
        # the second stage is spread over the GPU: at least one program per SM of an H200
        assert wg["grid"] >= 132, f"weight-gradient stage: only {wg['grid']} programs"


@pytest.mark.parametrize("arch, dtype, call", SUBSET, ids=[_id(p) for p in SUBSET])
def test_triton_kernels_have_no_spills_and_vector_access(arch, dtype, call, cache):
    _check_triton(arch, dtype, call, cache)


def test_the_subset_covers_every_config():
    """Every config the launcher can pick is compiled by the subset above."""
    classes = {cfg.kwargs["BLOCK_W"] for cfg in ti.GPU_CONFIGS}
    assert classes == {ti_block_w(call) for _, _, call in SUBSET}


def ti_block_w(call):
    from fusionseg_kernels.ops.inception_dwconv3d.triton_kernels import _block_w_class

    return _block_w_class(call[0][-1])


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FUSIONSEG_GPU_STATIC_FULL") != "1",
                    reason="every call x dtype x arch: set FUSIONSEG_GPU_STATIC_FULL=1 (~10-20 min)")
@pytest.mark.parametrize("arch, dtype, call", FULL, ids=[_id(p) for p in FULL])
def test_triton_kernels_every_call_dtype_arch(arch, dtype, call, cache):
    _check_triton(arch, dtype, call, cache)


def test_specialization_is_the_launchers():
    """The report's compile sees what a launch would: divisibility attributes follow the real
    arguments (a width of 8 elements is not a multiple of 16; a width of 128 is)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", 90, 32))
    divisible = {}
    for shape, gc, _ in (BIG, SMALL):
        x, ws, bs = gs.meta_call(shape, gc, torch.bfloat16)
        launch = ti.forward_launch(x, torch.empty_like(x), ws, bs)
        fn, args = launch.jit_function, launch.args
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        cfg = gs._launcher_configs(launch)[0]
        kwargs = dict(launch.kwargs, **cfg.all_kwargs())
        bound, spec, opts = binder(*args, **kwargs)
        _, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
        divisible[shape[-1]] = {fn.arg_names[k[0]] for k, v in attrs.items() if v}
        assert signature["x_ptr"] == "*bf16" and signature["sxw"] == "constexpr"  # stride 1
        assert cfg.kwargs["BLOCK_W"] == min(128, shape[-1]) or cfg.kwargs["BLOCK_W"] == 8
    assert {"W", "H", "sxh"} <= divisible[128]
    assert "W" not in divisible[8] and "sxh" not in divisible[8]


def test_sass_counter_reads_access_widths():
    sass = """
        /*0080*/ LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0090*/ LDG.E.U16 R8, desc[UR4][R6.64] ;
        /*00a0*/ STG.E.64 desc[UR4][R2.64], R4 ;
        /*00b0*/ STL.64 [R1], R10 ;
        /*00c0*/ LDG.E R9, desc[UR4][R6.64] ;
        /*00d0*/ BAR.SYNC.DEFER_BLOCKING 0x0 ;
    """
    st = gs.sass_stats(sass)
    assert st["global_access_bits"] == {"16": 1, "32": 1, "64": 1, "128": 1}
    assert st["spill_bytes"] == 8 and st["bar_sync"] == 1


def test_occupancy_follows_the_register_file():
    assert gs.occupancy("sm_90", 124, 4, 0)[0] == 4
    assert gs.occupancy("sm_90", 255, 4, 0)[0] == 2
    assert gs.occupancy("sm_89", 32, 8, 0)[0] == 6  # 1536 threads per SM on sm_89
    assert gs.occupancy("sm_90", 32, 8, 0)[0] == 8  # 2048 on sm_90
    assert gs.occupancy("sm_90", 32, 4, 100 * 1024)[0] == 2  # shared memory binds


# ------------------------------------------------------------------------------ CUDA

LIB = gs.cuda_library()


def _cuda(arch):
    if LIB is None:
        pytest.skip("the extension is not built")
    ks = gs.cuda_kernels(arch, LIB, log=lambda *a: None)
    if not ks:
        pytest.skip(f"the library has no {arch} code")
    return ks


@pytest.mark.parametrize("arch", ["sm_89", "sm_90"])
def test_cuda_kernels_stage_halos_in_16_byte_vectors(arch):
    """The forward and backward kernels load 16-byte vectors beyond the identity copy's: the
    halo staging of aligned rows (the model counts them to tell the two staging forms apart)."""
    ks = [k for k in _cuda(arch) if k["kernel"] in ("idc_conv_kernel", "idc_backward_kernel")
          and k["dtype"] != "fp64"]
    assert {(k["kernel"], k["dtype"]) for k in ks} == {
        (kernel, dtype) for kernel in ("idc_conv_kernel", "idc_backward_kernel")
        for dtype in ("fp32", "fp16", "bf16")}
    for k in ks:
        bits = k["global_access_bits"]["128"]
        assert bits > gs.CUDA_IDENTITY_128BIT_ACCESSES, (k["kernel"], k["dtype"], k["spec"], bits)


@pytest.mark.parametrize("arch", ["sm_89", "sm_90"])
def test_cuda_kernels_use_no_local_memory(arch):
    """No spills, stack frame or local memory in any kernel of the op in fp32, fp16, bf16 (fp64,
    a verification dtype, may spill)."""
    ks = [k for k in _cuda(arch) if k["dtype"] != "fp64" and k["kernel"] in (
        "idc_conv_kernel", "idc_backward_kernel", "idc_weight_grad_reduce_kernel",
        "idc_weight_grad_generic_kernel")]
    assert {k["kernel"] for k in ks} >= {"idc_conv_kernel", "idc_backward_kernel"}
    with_local = {(k["kernel"], k["dtype"], k["spec"], k["spill_bytes"], k["stack_bytes"]) for k in ks
                  if k["spill_bytes"] or k["stack_bytes"] or k["local"] or k["ldl"]}
    assert not with_local, f"(kernel, dtype, spec, spill bytes, stack bytes): {with_local}"


@pytest.mark.parametrize("arch", ["sm_89", "sm_90"])
def test_cuda_norm_kernels_use_no_local_memory_and_stream_16_byte_vectors(arch):
    """The fused norm's six CUDA kernels in every dtype: no local memory; the vector instances of
    the four streaming kernels load (and the two that write, store) 16-byte vectors; a predicted
    >= 80 % of DRAM bandwidth on the calls of at least 32 MB in bf16 (bf16 and fp32)."""
    ks = [k for k in _cuda(arch) if k["kernel"].startswith("norm_")]
    names = {k["kernel"] for k in ks}
    assert names == {f"norm_{n}" for n in gs.CUDA_NORM_KERNELS}, names
    streaming = ("norm_moments_kernel", "norm_apply_kernel", "norm_grad_moments_kernel", "norm_grad_apply_kernel")
    for kernel in streaming:
        assert {(k["dtype"], k["spec"]) for k in ks if k["kernel"] == kernel} == {
            (dtype, spec) for dtype in ("fp32", "fp64", "fp16", "bf16") for spec in ("vector", "scalar")}, kernel
    with_local = {(k["kernel"], k["dtype"], k["spec"]) for k in ks
                  if k["spill_bytes"] or k["stack_bytes"] or k["local"] or k["ldl"]}
    assert not with_local, f"(kernel, dtype, spec) with local memory: {with_local}"
    narrow = {(k["kernel"], k["dtype"]) for k in ks
              if k["kernel"] in streaming and k["spec"] == "vector" and not k["global_access_bits"]["128"]}
    assert not narrow, f"vector instances without 16-byte accesses: {narrow}"
    big = [s for s in gs.norm_calls() if math.prod(s) * 2 >= gs.TARGET_MIN_X_BYTES]
    for dtype in ("bf16", "fp32"):
        kernels = gs.cuda_norm_kernels(ks, dtype)
        for shape in big:
            for direction in ("forward", "forward+backward"):
                fraction = gs.norm_prediction(arch, dtype, shape, kernels, direction,
                                              gs.cuda_norm_launch(dtype))["predicted_fraction"]
                assert fraction >= 0.8, f"{dtype} {shape} {direction}: predicted {fraction:.0%} of DRAM bandwidth"


def test_report_has_the_documented_shape(tmp_path, cache):
    """bench/gpu_static.py --json writes exactly the documented keys (one small call)."""
    import json

    report = {"kernels": [], "predictions": []}
    seen = set()
    entry = _compile_call("sm_90", "fp32", SMALL, cache, first_only=True)  # shared with SUBSET
    for f in entry["forward"]:
        gs._add_kernel(report, seen, "triton", "_idc_forward_kernel", "sm_90", "fp32", f["config"], f)
    x_bytes = math.prod(SMALL[0]) * 4
    for direction in ("forward", "forward+backward"):
        gs._add_pred(report, "triton", "sm_90", "fp32", SMALL[0], x_bytes, direction,
                     gs.triton_prediction("sm_90", "fp32", entry, direction))
    public = gs.public_report(report)
    json.dumps(public)
    assert set(public) == {"kernels", "predictions"}
    assert set(public["kernels"][0]) == set(gs.KERNEL_KEYS)
    assert set(public["kernels"][0]["global_access_bits"]) == {"16", "32", "64", "128"}
    assert set(public["predictions"][0]) == set(gs.PREDICTION_KEYS)
    assert {p["direction"] for p in public["predictions"]} == {"forward", "forward+backward"}
    assert all(0 < p["predicted_fraction"] <= 1 for p in public["predictions"])


@pytest.mark.parametrize("arch, dtype", [("sm_90", "bf16"), ("sm_89", "fp32")])
def test_norm_kernels_have_no_spills_vector_access_and_stream_at_80_percent(arch, dtype, cache):
    """The fused InstanceNorm + LeakyReLU's four Triton kernels: no local memory, 128-bit loads,
    and a predicted >= 80 % of DRAM bandwidth on the calls of at least 32 MB in bf16."""
    kernels = gs.norm_kernels(arch, dtype, cache, log=lambda *a: None)
    for name, k in kernels.items():
        _check_no_local_memory(f"triton norm {name} {arch} {dtype}", k)
        assert k["global_access_bits"]["128"] > 0, f"{name}: no 128-bit global access"
    big = [s for s in gs.norm_calls() if math.prod(s) * 2 >= gs.TARGET_MIN_X_BYTES]
    assert len(big) == 3
    for shape in big:
        for direction in ("forward", "forward+backward"):
            fraction = gs.norm_prediction(arch, dtype, shape, kernels, direction)["predicted_fraction"]
            assert fraction >= 0.8, f"{shape} {direction}: predicted {fraction:.0%} of DRAM bandwidth"
