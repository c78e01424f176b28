"""Conformance checking of inception_dwconv3d backends: one table of cases and tolerances.

Every backend's tests (tests/ops/test_conformance.py, the Triton interpreter suite), the CUDA
emulation runner and the compute-sanitizer driver (bench/sanitize_cuda.py) iterate over
`CONFORMANCE_CASES` and judge results with `rel_l2` against the float64 reference, forward and
every gradient. Low precision (float16/bfloat16) is judged against PyTorch's own result in that
dtype: at most `LOW_PRECISION_FACTOR` times its distance from float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .ops.inception_dwconv3d.reference import inception_dwconv3d_reference

# Kernel sizes (cube, w, h, d) per group.
STRIP_KERNELS = ((3, 3, 3), (1, 1, 11), (1, 11, 1), (11, 1, 1))
PLANE_KERNELS = ((3, 3, 3), (1, 11, 11), (11, 1, 11), (11, 11, 1))
ODD_KERNELS = ((5, 5, 5), (1, 1, 7), (1, 7, 1), (7, 1, 1))
MIXED_KERNELS = ((5, 3, 7), (1, 1, 1), (3, 3, 3), (1, 13, 1))
LARGE_CUBE_KERNELS = ((9, 9, 9), (1, 1, 3), (1, 3, 1), (3, 1, 1))

# Relative L2 error allowed against the float64 reference. float32 kernels land near 1e-7..1e-6;
# float64 kernels in another operation order near 1e-15.
REL_L2_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
LOW_PRECISION_FACTOR = 2.0
# Unit roundoff of the low-precision dtypes. Half of it is the floor under PyTorch's own error
# (a gradient that happens to be exact in fp16 would otherwise demand exactness): a result
# rounded once to the dtype sits near 0.58 unit roundoffs, inside 2 x the floor.
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


@dataclass(frozen=True)
class ConformanceCase:
    """One input configuration: x of `shape` (N, C, D, H, W), gc channels per group, the four
    groups' kernel sizes, x's dtype, biases or not. ``small`` cases are cheap enough for the
    Triton interpreter and the CUDA emulation."""

    name: str
    shape: tuple
    gc: int
    kernels: tuple = STRIP_KERNELS
    dtype: torch.dtype = torch.float32
    bias: bool = True
    small: bool = True

    @property
    def id(self) -> str:
        return self.name.replace(" ", "-")

    @property
    def emulated(self) -> bool:
        """Cheap enough for the CUDA emulation (every CUDA thread a CPU thread): small, <= 16k elements."""
        return self.small and math.prod(self.shape) <= 16_000


CONFORMANCE_CASES = (
    ConformanceCase("odd sizes batch 2", (2, 16, 7, 9, 13), 2),
    ConformanceCase("prime sizes no identity", (1, 8, 11, 13, 17), 2, dtype=torch.float64),
    ConformanceCase("smaller than the band kernel", (1, 19, 5, 3, 2), 4),
    ConformanceCase("single voxel", (1, 9, 1, 1, 1), 2, dtype=torch.float64),
    ConformanceCase("tiny volume", (2, 12, 1, 2, 3), 2, dtype=torch.float64),
    ConformanceCase("plane variant", (1, 20, 5, 3, 40), 5, PLANE_KERNELS),
    ConformanceCase("plane variant float64", (1, 8, 5, 12, 9), 1, PLANE_KERNELS, torch.float64),
    ConformanceCase("other odd kernels", (2, 10, 7, 6, 9), 2, ODD_KERNELS),
    ConformanceCase("mixed kernels with a 1x1x1 group", (1, 9, 4, 4, 4), 1, MIXED_KERNELS, torch.float64),
    ConformanceCase("9^3 cube", (1, 4, 6, 7, 9), 1, LARGE_CUBE_KERNELS, torch.float64),
    ConformanceCase("no biases", (2, 16, 5, 6, 7), 2, bias=False),
    ConformanceCase("gc 0 identity only", (1, 7, 3, 4, 5), 0),
    ConformanceCase("gc 13", (1, 55, 4, 6, 12), 13, dtype=torch.float64),
    ConformanceCase("gc 40", (1, 163, 3, 4, 9), 40, small=False),
    ConformanceCase("tiles cut on every axis", (1, 5, 9, 9, 33), 1, dtype=torch.float64, bias=False),
    ConformanceCase("aligned rows, 2 tiles along W", (2, 16, 4, 8, 40), 2),
    # W a multiple of 16 bytes: the CUDA kernels stage halo rows in 16-byte vectors
    ConformanceCase("16-byte rows, 2 tiles along W", (1, 8, 3, 4, 40), 1),
    ConformanceCase("bfloat16 16-byte rows", (2, 12, 3, 5, 16), 2, dtype=torch.bfloat16),
    ConformanceCase("long rows", (1, 16, 20, 21, 70), 2, small=False),
    ConformanceCase("straddles GPU tile edges", (2, 9, 17, 19, 33), 2, small=False),
    ConformanceCase("gc 10, thin W", (1, 41, 13, 5, 3), 10, small=False),
    ConformanceCase("batch 3, H past a tile", (3, 32, 9, 33, 8), 4, PLANE_KERNELS, small=False),
    ConformanceCase("float16", (1, 24, 5, 6, 20), 3, dtype=torch.float16),
    ConformanceCase("bfloat16", (1, 20, 3, 5, 11), 3, dtype=torch.bfloat16),
    ConformanceCase("bfloat16 plane", (2, 32, 6, 8, 16), 4, PLANE_KERNELS, torch.bfloat16, small=False),
    ConformanceCase("float16 odd sizes", (1, 20, 9, 13, 37), 3, dtype=torch.float16, small=False),
)


def rel_l2(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref|| / ||ref|| in float64 (the absolute norm when ref is zero)."""
    y, ref = y.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref.norm().item()
    diff = (y - ref).norm().item()
    return diff / denom if denom > 0 else diff


def make_op_args(channels, gc, kernels=STRIP_KERNELS, dtype=torch.float64, device="cpu",
                 bias=True, requires_grad=False, seed=0):
    """The eight weight/bias arguments in the op's order (cube, w, h, d), seeded."""
    gen = torch.Generator().manual_seed(seed)
    args = []
    for k in kernels:
        w = torch.randn(gc, 1, *k, generator=gen, dtype=torch.float64) / math.sqrt(math.prod(k))
        b = torch.randn(gc, generator=gen, dtype=torch.float64) if bias else None
        w = w.to(device=device, dtype=dtype).requires_grad_(requires_grad)
        if b is not None:
            b = b.to(device=device, dtype=dtype).requires_grad_(requires_grad)
        args += [w, b]
    return args


def make_input(shape, dtype=torch.float64, device="cpu", seed=1, requires_grad=False):
    """A seeded standard-normal tensor of `shape`."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return x.to(device=device, dtype=dtype).requires_grad_(requires_grad)


def case_inputs(case: ConformanceCase, device="cpu"):
    """(x, the eight weight/bias arguments, grad_y) of a case, on `device`."""
    x = make_input(case.shape, dtype=case.dtype, device=device)
    args = make_op_args(case.shape[1], case.gc, case.kernels, dtype=case.dtype, device=device,
                        bias=case.bias)
    grad_y = make_input(case.shape, dtype=case.dtype, device=device, seed=7)
    return x, args, grad_y


def outputs_and_grads(fn, x, args, grad_y):
    """fn(x, *args) and the gradients of x and of every non-None argument for grad_y."""
    x = x.detach().requires_grad_(True)
    args = [None if a is None else a.detach().requires_grad_(True) for a in args]
    y = fn(x, *args)
    inputs = [x] + [a for a in args if a is not None]
    grads = torch.autograd.grad(y, inputs, grad_y.to(y.dtype), allow_unused=True, materialize_grads=True)
    return y.detach(), [g.detach() for g in grads]


def reference_outputs(x, args, grad_y):
    """Forward output and gradients of the float64 reference on the CPU."""
    return outputs_and_grads(
        inception_dwconv3d_reference, x.detach().double().cpu(),
        [None if a is None else a.detach().double().cpu() for a in args], grad_y.detach().double().cpu())


def output_names(args) -> list[str]:
    names = ("cube_weight", "cube_bias", "w_weight", "w_bias", "h_weight", "h_bias", "d_weight", "d_bias")
    return ["y", "grad x"] + [f"grad {n}" for n, a in zip(names, args) if a is not None]


def conformance_errors(fn, x, args, grad_y) -> dict[str, float]:
    """{output name: relative L2 error against the float64 reference} for y and every gradient;
    non-finite values (e.g. unwritten elements) count as an infinite error."""
    ref_y, ref_grads = reference_outputs(x, args, grad_y)
    y, grads = outputs_and_grads(fn, x, args, grad_y)
    errors = {}
    for name, got, want in zip(output_names(args), [y, *grads], [ref_y, *ref_grads]):
        if got.shape != want.shape:
            raise AssertionError(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        errors[name] = rel_l2(got, want) if bool(torch.isfinite(got).all()) else math.inf
    return errors


def allowed_errors(x, args, grad_y) -> dict[str, float]:
    """The bound per output: the dtype's tolerance, or for float16/bfloat16 twice PyTorch's own
    error in that dtype (at least the unit-roundoff floor)."""
    if x.dtype in REL_L2_TOLERANCE:
        return {name: REL_L2_TOLERANCE[x.dtype] for name in output_names(args)}
    theirs = conformance_errors(inception_dwconv3d_reference, x, args, grad_y)
    floor = UNIT_ROUNDOFF[x.dtype] / 2
    return {name: LOW_PRECISION_FACTOR * max(err, floor) for name, err in theirs.items()}


def check_conformance(fn, x, args, grad_y) -> list[str]:
    """The outputs of fn outside their bound, as sentences (empty when fn conforms)."""
    errors = conformance_errors(fn, x, args, grad_y)
    bounds = allowed_errors(x, args, grad_y)
    return [f"{name}: rel L2 {errors[name]:.3e} > {bounds[name]:.3e}"
            for name in errors if not errors[name] <= bounds[name]]
