"""Shared test helpers. The case table, tolerances and comparisons live in
`fusionseg_kernels.testing` (also used by the CUDA emulation runner and the sanitizer driver);
this module adds the assert forms the tests use."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fusionseg_kernels.testing import (LOW_PRECISION_FACTOR, PLANE_KERNELS, REL_L2_TOLERANCE,  # noqa: F401
                                       STRIP_KERNELS, UNIT_ROUNDOFF, check_conformance,
                                       conformance_errors, make_input, make_op_args,
                                       outputs_and_grads, reference_outputs, rel_l2)

#: the repository root and the fixtures copied from the original implementation
ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "tests" / "data"

#: skips a test on machines without a CUDA GPU (conftest.py marks such tests `gpu`)
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")

backend_outputs = outputs_and_grads  # the name the backend tests use


def assert_matches_reference(fn, x, args, tolerance=None, grad_seed=7):
    """fn's output and all gradients within the dtype's relative-L2 tolerance of the float64 reference."""
    grad_y = make_input(x.shape, dtype=x.dtype, device=x.device, seed=grad_seed)
    y = fn(x.detach(), *[None if a is None else a.detach() for a in args])
    assert y.shape == x.shape and y.dtype == x.dtype, (tuple(y.shape), y.dtype)
    if tolerance is None:
        failures = check_conformance(fn, x, args, grad_y)
    else:
        errors = conformance_errors(fn, x, args, grad_y)
        failures = [f"{n}: rel L2 {e:.3e} > {tolerance:.1e}" for n, e in errors.items() if not e <= tolerance]
    assert not failures, "; ".join(failures)


def assert_low_precision_close(fn, x, args, grad_seed=7):
    """fn in fp16/bf16 at most 2x as far from float64 as PyTorch's own fp16/bf16 reference
    (with a floor of half the dtype's unit roundoff), for the output and every gradient."""
    assert x.dtype in UNIT_ROUNDOFF, x.dtype
    assert_matches_reference(fn, x, args, grad_seed=grad_seed)
