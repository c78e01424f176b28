"""Builds the emulated CUDA kernels (emulated_kernels.cpp) and checks them against the float64
reference on small cases; prints one JSON line per case and a final summary line.

Run in its own process (tests/test_cuda_emulation.py does): the library registers the fusionseg
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
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

STRIP = ((3, 3, 3), (1, 1, 11), (1, 11, 1), (11, 1, 1))
PLANE = ((3, 3, 3), (1, 11, 11), (11, 1, 11), (11, 11, 1))
ODD = ((5, 5, 5), (1, 1, 7), (1, 7, 1), (7, 1, 1))
BIG = ((9, 9, 9), (1, 1, 3), (1, 3, 1), (3, 1, 1))  # generic dW tile must shrink to fit 99 KB

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}

# name, (N, C, D, H, W), gc, kernels, dtype, bias
CASES = [
    ("strip f32 aligned, 2 tiles along W", (2, 16, 4, 8, 40), 2, STRIP, torch.float32, True),
    ("strip f32 odd sizes, scalar identity", (1, 13, 9, 7, 5), 2, STRIP, torch.float32, True),
    ("strip f64 tiles cut on every axis", (1, 9, 17, 9, 35), 2, STRIP, torch.float64, False),
    ("strip f64 tiny volume", (2, 12, 1, 2, 3), 2, STRIP, torch.float64, True),
    ("strip f16", (1, 24, 5, 6, 20), 3, STRIP, torch.float16, True),
    ("strip bf16", (1, 20, 3, 5, 11), 3, STRIP, torch.bfloat16, True),
    ("plane f64 (generic)", (1, 8, 5, 12, 9), 1, PLANE, torch.float64, True),
    ("odd f32 (generic)", (2, 10, 7, 6, 9), 2, ODD, torch.float32, True),
    ("9^3 f64 (generic, shrunken dW tile)", (1, 4, 6, 7, 9), 1, BIG, torch.float64, True),
    ("gc=0 (identity only)", (1, 7, 3, 4, 5), 0, STRIP, torch.float32, True),
]


def build(build_dir: Path):
    from torch.utils.cpp_extension import load

    build_dir.mkdir(parents=True, exist_ok=True)
    return load(
        name="fusionseg_cuda_emulation",
        sources=[str(HERE / "emulated_kernels.cpp"), str(ROOT / "csrc" / "ops" / "inception_dwconv3d.cpp")],
        extra_include_paths=[str(ROOT / "csrc" / "include")],
        extra_cflags=["-O1", "-std=c++20", "-Wno-unknown-pragmas", "-fno-strict-aliasing"],
        extra_ldflags=["-lpthread"],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )


def reference(x, args):
    gc = args[0].shape[0]
    identity = x.shape[1] - 4 * gc
    if gc == 0:
        return x.clone()
    parts = [x[:, :identity]]
    for g in range(4):
        w, b = args[2 * g], args[2 * g + 1]
        xs = x[:, identity + g * gc: identity + (g + 1) * gc]
        parts.append(F.conv3d(xs, w, b, padding=tuple(k // 2 for k in w.shape[2:]), groups=gc))
    return torch.cat(parts, 1)


def rel_l2(a, b):
    a, b = a.double(), b.double()
    d = b.norm().item()
    return (a - b).norm().item() / d if d > 0 else (a - b).norm().item()


def run_case(name, shape, gc, kernels, dtype, bias):
    gen = torch.Generator().manual_seed(0)
    x64 = torch.randn(*shape, generator=gen, dtype=torch.float64)
    gy64 = torch.randn(*shape, generator=gen, dtype=torch.float64)
    args64 = []
    for k in kernels:
        args64.append(torch.randn(gc, 1, *k, generator=gen, dtype=torch.float64) / (k[0] * k[1] * k[2]) ** 0.5)
        args64.append(torch.randn(gc, generator=gen, dtype=torch.float64) if bias else None)
    # reference: float64 on the values the kernel sees (inputs rounded to dtype)
    xr = x64.to(dtype).double().requires_grad_(True)
    ar = [None if a is None else a.to(dtype).double().requires_grad_(True) for a in args64]
    yr = reference(xr, ar)
    weights_r = [ar[0], ar[2], ar[4], ar[6]]
    biases_r = [b for b in (ar[1], ar[3], ar[5], ar[7]) if b is not None]
    grads_r = torch.autograd.grad(yr, [xr, *weights_r, *biases_r], gy64.to(dtype).double(), allow_unused=True,
                                  materialize_grads=True)

    x = x64.to(dtype)
    a = [None if t is None else t.to(dtype) for t in args64]
    t0 = time.time()
    y = torch.ops.fusionseg.inception_dwconv3d_forward(x, *a)
    out = torch.ops.fusionseg.inception_dwconv3d_backward(gy64.to(dtype), x, a[0], a[2], a[4], a[6])
    seconds = time.time() - t0
    got = [y, out[0], *out[1:5]] + [out[5 + g] for g in range(4) if a[2 * g + 1] is not None]
    ref = [yr.detach(), *grads_r]
    labels = ["y", "dx", "dW_cube", "dW_w", "dW_h", "dW_d"] + [f"db_{n}" for n, b in
                                                                zip(("cube", "w", "h", "d"), biases_r) if True]
    errors = {}
    ok = True
    for label, g, r in zip(labels, got, ref):
        if tuple(g.shape) != tuple(r.shape) or not torch.isfinite(g).all():
            errors[label] = "shape or non-finite"
            ok = False
            continue
        e = rel_l2(g, r)
        errors[label] = e
        ok &= e <= TOLERANCE[dtype]
    return {"case": name, "ok": bool(ok), "seconds": round(seconds, 2), "errors": errors}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build-dir", default=str(ROOT / "build" / "cuda-emulation"))
    opts = parser.parse_args()
    build(Path(opts.build_dir))
    torch.set_num_threads(1)
    failures = 0
    for case in CASES:
        res = run_case(*case)
        failures += not res["ok"]
        print(json.dumps(res), flush=True)
    print(json.dumps({"summary": True, "cases": len(CASES), "failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("MAX_JOBS", "2")
    sys.exit(main())
