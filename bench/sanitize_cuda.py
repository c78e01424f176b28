#!/usr/bin/env python3
"""Small forward and backward cases of the CUDA backend of inception_dwconv3d, for compute-sanitizer.

    compute-sanitizer --tool memcheck  python3 -m bench.sanitize_cuda
    compute-sanitizer --tool racecheck python3 -m bench.sanitize_cuda
    python3 -m bench.sanitize_cuda --device cpu     # dry run: the same cases on the CPU backend

The cases are the small ones of the shared conformance table (fusionseg_kernels.testing), which
cover every kernel of the backend. Every output and gradient is judged as in the test suite:
against the float64 reference computed on the CPU (so the sanitizer only watches fusionseg's
kernels and a few PyTorch copies), fp16/bf16 against twice PyTorch's own error.

Exit status: 0 when every case matches ("all cases match"), 1 on a mismatch or non-finite
value, 2 when the cases cannot run (no CUDA GPU, CUDA kernels not built).
"""
from __future__ import annotations

import argparse
import sys

import torch


from fusionseg_kernels import inception_dwconv3d
from fusionseg_kernels.testing import (CONFORMANCE_CASES, case_inputs, check_conformance,
                                       conformance_errors)

# The small cases of the shared conformance table: every kernel of the backend (strip fast path
# with vectorized and scalar identity copies, tiles cut at the volume's edges; the generic path for
# planes and other odd sizes; gc = 0; no biases; each dtype) in seconds under the sanitizer.
CASES = [c for c in CONFORMANCE_CASES if c.small]


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
    for case in CASES:
        x, args, grad_y = case_inputs(case, device)
        errors = conformance_errors(fn, x, args, grad_y)
        bad = check_conformance(fn, x, args, grad_y)
        if device == "cuda":
            torch.cuda.synchronize()
        worst = max(errors, key=errors.get)
        failures += bool(bad)
        print(f"{'MISMATCH' if bad else 'ok':8s} {case.name:34s} {str(case.shape):22s} gc={case.gc:<2d} "
              f"{str(case.dtype):15s} worst rel L2 {errors[worst]:.2e} ({worst})"
              + (f": {'; '.join(bad)}" if bad else ""), flush=True)
    if failures:
        print(f"sanitize_cuda: {failures} of {len(CASES)} cases do not match the reference")
        return 1
    print(f"sanitize_cuda: all cases match ({len(CASES)} cases, backend {backend})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
