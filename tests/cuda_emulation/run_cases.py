"""Builds the emulated CUDA kernels (emulated_kernels.cpp: InceptionDWConv3d; emulated_norm_kernels.cpp:
InstanceNorm + LeakyReLU) and checks them against the float64 reference on small cases; prints one
JSON line per case and a final summary line.

Run in its own process (tests/ops/test_cuda_emulation.py does): the library registers the fusionseg
schemas, which must not meet the package's own extension in one process.

    python tests/cuda_emulation/run_cases.py [--build-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def build(build_dir: Path):
    from torch.utils.cpp_extension import load

    build_dir.mkdir(parents=True, exist_ok=True)
    return load(
        name="fusionseg_cuda_emulation",
        sources=[str(HERE / "emulated_kernels.cpp"), str(HERE / "emulated_norm_kernels.cpp"),
                 str(ROOT / "csrc" / "ops" / "inception_dwconv3d.cpp"),
                 str(ROOT / "csrc" / "ops" / "instance_norm_act.cpp")],
        extra_include_paths=[str(ROOT / "csrc" / "include")],
        extra_cflags=["-O1", "-std=c++20", "-Wno-unknown-pragmas", "-fno-strict-aliasing"],
        extra_ldflags=["-lpthread"],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )


class EmulatedOp(torch.autograd.Function):
    """The emulated forward and backward ops under autograd, so the shared conformance check
    (fusionseg_kernels.testing) can take their gradients like any backend's."""

    @staticmethod
    def forward(ctx, x, *args):
        ctx.save_for_backward(x, *args[0::2])
        ctx.has_bias = [b is not None for b in args[1::2]]
        return torch.ops.fusionseg.inception_dwconv3d_forward(x, *args)

    @staticmethod
    def backward(ctx, grad_y):
        x, *weights = ctx.saved_tensors
        grads = torch.ops.fusionseg.inception_dwconv3d_backward(grad_y.contiguous(), x, *weights)
        out = [grads[0]]
        for gw, gb, has_bias in zip(grads[1:5], grads[5:9], ctx.has_bias):
            out += [gw, gb if has_bias else None]
        return tuple(out)


def run_case(case):
    from fusionseg_kernels.testing import case_inputs, check_conformance, conformance_errors

    x, args, grad_y = case_inputs(case)
    t0 = time.time()
    errors = conformance_errors(EmulatedOp.apply, x, args, grad_y)
    seconds = time.time() - t0
    failures = check_conformance(EmulatedOp.apply, x, args, grad_y)
    return {"case": case.name, "ok": not failures, "seconds": round(seconds, 2),
            "errors": {k: float(f"{v:.3e}") for k, v in errors.items()}, "failures": failures}


def norm_cases():
    """(name, check) for the InstanceNorm + LeakyReLU kernels: the CPU backend's conformance table in
    every dtype, contiguous and channels_last (copied to NCDHW by the op), out of place under
    autograd; the in-place op against the out-of-place one, bit for bit."""
    from fusionseg_kernels.ops.instance_norm_act.registration import register
    from tests.ops.test_instance_norm_act import CASES, _inputs, check_against_reference

    register("")  # fake kernels and autograd of the C++ trio, whose kernels here are the emulated ones
    ops = torch.ops.fusionseg

    def out_of_place(a, w, b, s):
        return ops.instance_norm_leaky_relu_forward(a, w, b, 1e-5, s)[0]

    def in_place(dtype):
        x, weight, bias, _ = _inputs((2, 5, 7, 9, 11), True, dtype, "contiguous")
        x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        expected = out_of_place(x, weight, bias, 0.05)
        y = x.clone()
        ops.instance_norm_leaky_relu_(y, weight, bias, 1e-5, 0.05)
        assert torch.equal(y, expected), "the in-place op differs from the out-of-place op"

    def opcheck(dtype):
        """Schema (no output aliases another or an input), fake kernel and autograd registration of
        the forward and the backward op, on the emulated kernels."""
        x, weight, bias, grad = _inputs((2, 3, 5, 6, 7), True, dtype, "contiguous")
        args = [t.to(dtype).requires_grad_() for t in (x, weight, bias)]
        torch.library.opcheck(ops.instance_norm_leaky_relu_forward, (*args, 1e-5, 0.01))
        _, mean, rstd = ops.instance_norm_leaky_relu_forward(*[a.detach() for a in args], 1e-5, 0.01)
        torch.library.opcheck(ops.instance_norm_leaky_relu_backward,
                              (grad.to(dtype), x.to(dtype), mean, rstd, weight.to(dtype), bias.to(dtype), 0.01))

    dtypes = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    for case in CASES:
        for dtype in dtypes:
            for layout in ("contiguous", "channels_last"):
                name = f"norm {'x'.join(map(str, case[0]))} affine{int(case[1])} slope{case[2]} {dtype} {layout}"
                yield name, (lambda c=case, d=dtype, lo=layout: check_against_reference(out_of_place, c, d, lo))
    for dtype in dtypes:
        yield f"norm in place {dtype}", (lambda d=dtype: in_place(d))
    for dtype in (torch.float64, torch.float32):
        yield f"norm opcheck {dtype}", (lambda d=dtype: opcheck(d))


def run_check(name, check):
    from torch.testing._internal.optests import OpCheckError

    t0 = time.time()
    try:
        check()
        failures = []
    except (AssertionError, OpCheckError) as err:
        failures = [str(err)[:2000]]
    return {"case": name, "ok": not failures, "seconds": round(time.time() - t0, 2), "failures": failures}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build-dir", default=str(ROOT / "build" / "cuda-emulation"))
    parser.add_argument("--ops", choices=("all", "inception", "norm"), default="all",
                        help="which op's kernels to check (default: both)")
    opts = parser.parse_args()
    build(Path(opts.build_dir))
    torch.set_num_threads(1)
    # The package without its own extension: the emulation library holds the fusionseg schemas here.
    os.environ["FUSIONSEG_NO_EXTENSION"] = "1"
    sys.path.insert(0, str(ROOT))
    from fusionseg_kernels.testing import CONFORMANCE_CASES

    cases = [c for c in CONFORMANCE_CASES if c.emulated] if opts.ops != "norm" else []
    failures = count = 0
    for case in cases:
        res = run_case(case)
        failures += not res["ok"]
        count += 1
        print(json.dumps(res), flush=True)
    for name, check in norm_cases() if opts.ops != "inception" else ():
        res = run_check(name, check)
        failures += not res["ok"]
        count += 1
        print(json.dumps(res), flush=True)
    print(json.dumps({"summary": True, "cases": count, "failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("MAX_JOBS", "2")
    sys.exit(main())
