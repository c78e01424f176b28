#!/usr/bin/env python3
"""Small forward and backward cases of the CUDA backend of inception_dwconv3d, for compute-sanitizer.

    compute-sanitizer --tool memcheck  python3 bench/sanitize_cuda.py
    compute-sanitizer --tool racecheck python3 bench/sanitize_cuda.py
    python3 bench/sanitize_cuda.py --device cpu     # dry run: the same cases on the CPU backend

The cases cover every kernel of the backend: the fused strip forward and backward (identity
copy vectorized and scalar, tiles cut at the volume's edges), the generic path (plane variant,
other odd sizes: generic forward, dx and weight-gradient kernels), gc = 0, no biases, and each
dtype. Every output and gradient is compared with the float64 reference computed on the CPU
(so the sanitizer only watches fusionseg's kernels and a few PyTorch copies).

Exit status: 0 when every case matches ("all cases match"), 1 on a mismatch or non-finite
value, 2 when the cases cannot run (no CUDA GPU, CUDA kernels not built).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusionseg_kernels import inception_dwconv3d, inception_dwconv3d_reference  # noqa: E402

STRIP = ((3, 3, 3), (1, 1, 11), (1, 11, 1), (11, 1, 1))
PLANE = ((3, 3, 3), (1, 11, 11), (11, 1, 11), (11, 11, 1))
ODD = ((5, 5, 5), (1, 1, 7), (1, 7, 1), (7, 1, 1))

# Relative L2 error allowed against float64 (float32 1e-5; low precision: a few ulps
# of the storage type, well above what a correct kernel shows and far below a wrong one).
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}

# name, (N, C, D, H, W), gc, kernels, dtype, bias
CASES = [
    ("strip f32 aligned", (2, 16, 4, 8, 40), 2, STRIP, torch.float32, True),
    ("strip f32 odd sizes", (1, 13, 9, 7, 5), 2, STRIP, torch.float32, True),
    ("strip f32 tile edges", (1, 9, 17, 33, 35), 2, STRIP, torch.float32, False),
    ("strip f16", (1, 24, 5, 6, 20), 3, STRIP, torch.float16, True),
    ("strip bf16", (1, 20, 3, 5, 11), 3, STRIP, torch.bfloat16, True),
    ("strip f64", (1, 12, 6, 5, 7), 2, STRIP, torch.float64, True),
    ("plane f32 (generic)", (1, 12, 6, 13, 9), 2, PLANE, torch.float32, True),
    ("plane f64 (generic)", (1, 8, 5, 12, 3), 1, PLANE, torch.float64, False),
    ("odd f32 (generic)", (2, 10, 7, 6, 9), 2, ODD, torch.float32, True),
    ("gc=0 (identity only)", (1, 7, 3, 4, 5), 0, STRIP, torch.float32, True),
]


def make_case(shape, gc, kernels, dtype, bias, device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    gy = torch.randn(*shape, generator=gen, dtype=torch.float64)
    args = []
    for k in kernels:
        w = torch.randn(gc, 1, *k, generator=gen, dtype=torch.float64) / (k[0] * k[1] * k[2]) ** 0.5
        b = torch.randn(gc, generator=gen, dtype=torch.float64) if bias else None
        args += [w, b]
    cast = [None if a is None else a.to(device=device, dtype=dtype) for a in args]
    return x, gy, args, x.to(device=device, dtype=dtype), gy.to(device=device, dtype=dtype), cast


def outputs(fn, x, gy, args):
    x = x.detach().requires_grad_(True)
    args = [None if a is None else a.detach().requires_grad_(True) for a in args]
    y = fn(x, *args)
    inputs = [x] + [a for a in args if a is not None]
    # gc = 0: the reference never uses the (empty) weights; their gradients are zeros.
    grads = torch.autograd.grad(y, inputs, gy, allow_unused=True, materialize_grads=True)
    return [y.detach()] + list(grads)


def rel_l2(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    denom = b.norm().item()
    diff = (a - b).norm().item()
    return diff / denom if denom > 0 else diff


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (default): the CUDA backend; cpu: dry run on the CPU backend")
    opts = parser.parse_args()
    device = opts.device
    if device == "cuda":
        if not torch.cuda.is_available():
            print("sanitize_cuda: no CUDA GPU on this machine; nothing was checked "
                  "(use --device cpu for a dry run)", file=sys.stderr)
            return 2
        from fusionseg_kernels._extension import has_cuda_kernels
        if not has_cuda_kernels():
            print("sanitize_cuda: the fusionseg extension has no CUDA kernels; rebuild it with a "
                  "CUDA toolkit (pip install --no-build-isolation -e .)", file=sys.stderr)
            return 2
        torch.backends.cudnn.allow_tf32 = False
    backend = device

    def fn(x, *a):
        return inception_dwconv3d(x, *a, backend=backend)

    failures = 0
    names = ("y", "dx", "cube_w", "cube_b", "w_w", "w_b", "h_w", "h_b", "d_w", "d_b")
    for name, shape, gc, kernels, dtype, bias in CASES:
        x64, gy64, args64, x, gy, args = make_case(shape, gc, kernels, dtype, bias, device)
        ref = outputs(inception_dwconv3d_reference, x64, gy64, args64)
        got = outputs(fn, x, gy, args)
        labels = [n for n in names[:2]] + [n for n, a in zip(names[2:], args) if a is not None]
        worst, worst_name, ok = 0.0, "", True
        for label, g, r in zip(labels, got, ref):
            if g.shape != r.shape or not torch.isfinite(g).all():
                ok, worst_name = False, f"{label} (shape {tuple(g.shape)} or non-finite values)"
                break
            e = rel_l2(g, r)
            if e > worst:
                worst, worst_name = e, label
            ok &= e <= TOLERANCE[dtype]
        if device == "cuda":
            torch.cuda.synchronize()
        status = "ok" if ok else "MISMATCH"
        failures += not ok
        print(f"{status:8s} {name:24s} {str(tuple(shape)):22s} gc={gc:<2d} {str(dtype):15s} "
              f"worst rel L2 {worst:.2e} ({worst_name})", flush=True)
    if failures:
        print(f"sanitize_cuda: {failures} of {len(CASES)} cases do not match the reference")
        return 1
    print(f"sanitize_cuda: all cases match ({len(CASES)} cases, backend {backend})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
