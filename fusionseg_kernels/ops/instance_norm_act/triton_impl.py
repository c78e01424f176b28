"""The Triton backend of instance_norm_leaky_relu: four kernels and the op trio
fusionseg::triton_instance_norm_leaky_relu_{forward,backward,_} (the schemas of the C++ ops).

Each (n, c) plane of S = D*H*W elements is cut into chunks of `CHUNK` elements; a program handles
one chunk of one plane, `BLOCK` elements at a time (the grid is planes x chunks, so a few large
planes still fill the GPU):
  forward   _moments_kernel: per-chunk sums of x - shift and (x - shift)^2 (shift = the plane's
            first value) -> a (planes, chunks, 2) buffer; the host adds the chunks in float64 and
            derives mean, rstd and the per-plane a = rstd * weight, b = bias - mean * a;
            _apply_kernel: y = lrelu(x * a + b) (y may be x: the in-place op).
  backward  _grad_moments_kernel: per-chunk sums of dz and dz * xhat (dz = dy * lrelu'(z), z and
            xhat recomputed from x); _grad_apply_kernel: dx = rstd * w * (dz - mean(dz) - xhat *
            mean(dz * xhat)).
Loads are converted to float32 (float64 for float64), stores to the tensor's dtype. Inputs in
another layout than contiguous NCDHW (channels_last_3d included) are made contiguous first and
the result is returned in the input's layout. No atomics: the chunk sums are added in a fixed
order, so results are deterministic.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

import triton
import triton.language as tl

from ... import config

INTERPRET = config.triton_interpret()
FORWARD_OP = "fusionseg::triton_instance_norm_leaky_relu_forward"
BACKWARD_OP = "fusionseg::triton_instance_norm_leaky_relu_backward"
INPLACE_OP = "fusionseg::triton_instance_norm_leaky_relu_"
#: elements per program and per step: 4 warps x 32 lanes x 8 (two 16-byte float32 vectors per lane)
BLOCK = 1024
#: elements per program: 4 steps. Small enough that the network's mid-size calls still make
#: several waves of programs (the last, partial wave costs less), large enough that the (planes,
#: chunks) partial sums stay small
CHUNK = 4 * BLOCK
NUM_WARPS = 4
_INT32_LIMIT = 2**31 - 1

_AVAILABLE = ((True, "") if INTERPRET or torch.cuda.is_available() else
              (False, "the triton backend needs a CUDA GPU (or TRITON_INTERPRET=1 set before "
                      "importing fusionseg_kernels, to run it on CPU tensors through the interpreter)"))


def available() -> tuple[bool, str]:
    return _AVAILABLE


@triton.jit
def _acc(v, IS_F64: tl.constexpr):
    if IS_F64:
        return v.to(tl.float64)
    return v.to(tl.float32)


@triton.jit
def _moments_kernel(x_ptr, part_ptr, S, n_chunks, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
                    IS_F64: tl.constexpr, WIDE: tl.constexpr):
    plane = tl.program_id(0)
    chunk = tl.program_id(1)
    if WIDE:
        plane = plane.to(tl.int64)
    base = x_ptr + plane * S
    shift = _acc(tl.load(base), IS_F64)
    s = _acc(tl.zeros([BLOCK], tl.float32), IS_F64)
    q = _acc(tl.zeros([BLOCK], tl.float32), IS_F64)
    start = chunk * CHUNK
    for step in range(0, CHUNK, BLOCK):
        idx = start + step + tl.arange(0, BLOCK)
        inside = idx < S
        v = tl.where(inside, _acc(tl.load(base + idx, mask=inside, other=0), IS_F64) - shift, 0)
        s += v
        q += v * v
    out = part_ptr + (plane * n_chunks + chunk) * 2
    tl.store(out, tl.sum(s, axis=0))
    tl.store(out + 1, tl.sum(q, axis=0))


@triton.jit
def _apply_kernel(x_ptr, y_ptr, a_ptr, b_ptr, S, slope, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
                  IS_F64: tl.constexpr, WIDE: tl.constexpr):
    plane = tl.program_id(0)
    chunk = tl.program_id(1)
    if WIDE:
        plane = plane.to(tl.int64)
    a = tl.load(a_ptr + plane)
    b = tl.load(b_ptr + plane)
    start = chunk * CHUNK
    for step in range(0, CHUNK, BLOCK):
        idx = start + step + tl.arange(0, BLOCK)
        inside = idx < S
        z = _acc(tl.load(x_ptr + plane * S + idx, mask=inside, other=0), IS_F64) * a + b
        y = tl.where(z > 0, z, z * slope)
        tl.store(y_ptr + plane * S + idx, y.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _plane_coefficients(mean_ptr, rstd_ptr, w_ptr, b_ptr, C, WIDE: tl.constexpr):
    """(plane, its mean, rstd, weight, bias) for this program."""
    plane = tl.program_id(0)
    if WIDE:
        plane = plane.to(tl.int64)
    return (plane, tl.load(mean_ptr + plane), tl.load(rstd_ptr + plane), tl.load(w_ptr + plane % C),
            tl.load(b_ptr + plane % C))


@triton.jit
def _dz_and_xhat(dy_ptr, x_ptr, offs, inside, mean, rstd, w, b, slope, IS_F64: tl.constexpr):
    """dz = dy * lrelu'(z) and xhat at offs, z and xhat recomputed from x (0 outside)."""
    xhat = (_acc(tl.load(x_ptr + offs, mask=inside, other=0), IS_F64) - mean) * rstd
    g = _acc(tl.load(dy_ptr + offs, mask=inside, other=0), IS_F64)
    dz = tl.where(inside, tl.where(xhat * w + b > 0, g, g * slope), 0)
    return dz, xhat


@triton.jit
def _grad_moments_kernel(dy_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, part_ptr, S, C, n_chunks, slope,
                         CHUNK: tl.constexpr, BLOCK: tl.constexpr, IS_F64: tl.constexpr, WIDE: tl.constexpr):
    plane, mean, rstd, w, b = _plane_coefficients(mean_ptr, rstd_ptr, w_ptr, b_ptr, C, WIDE)
    chunk = tl.program_id(1)
    s = _acc(tl.zeros([BLOCK], tl.float32), IS_F64)
    q = _acc(tl.zeros([BLOCK], tl.float32), IS_F64)
    start = chunk * CHUNK
    for step in range(0, CHUNK, BLOCK):
        idx = start + step + tl.arange(0, BLOCK)
        dz, xhat = _dz_and_xhat(dy_ptr, x_ptr, plane * S + idx, idx < S, mean, rstd, w, b, slope, IS_F64)
        s += dz
        q += dz * xhat
    out = part_ptr + (plane * n_chunks + chunk) * 2
    tl.store(out, tl.sum(s, axis=0))
    tl.store(out + 1, tl.sum(q, axis=0))


@triton.jit
def _grad_apply_kernel(dy_ptr, x_ptr, dx_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, c1_ptr, c2_ptr, S, C, slope,
                       CHUNK: tl.constexpr, BLOCK: tl.constexpr, IS_F64: tl.constexpr, WIDE: tl.constexpr):
    plane, mean, rstd, w, b = _plane_coefficients(mean_ptr, rstd_ptr, w_ptr, b_ptr, C, WIDE)
    c1 = tl.load(c1_ptr + plane)
    c2 = tl.load(c2_ptr + plane)
    k = rstd * w
    start = tl.program_id(1) * CHUNK
    for step in range(0, CHUNK, BLOCK):
        idx = start + step + tl.arange(0, BLOCK)
        inside = idx < S
        dz, xhat = _dz_and_xhat(dy_ptr, x_ptr, plane * S + idx, inside, mean, rstd, w, b, slope, IS_F64)
        dx = k * (dz - c1 - xhat * c2)
        tl.store(dx_ptr + plane * S + idx, dx.to(dx_ptr.dtype.element_ty), mask=inside)


# --------------------------------------------------------------------------------------------
# host side


def _launch(kernel):
    return kernel if INTERPRET else torch.library.wrap_triton(kernel)


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_channel(p: Optional[Tensor], C: int, fill: float, x: Tensor) -> Tensor:
    if p is None:
        return torch.full((C,), fill, dtype=_acc_dtype(x), device=x.device)
    return p.detach().to(_acc_dtype(x)).contiguous()


def _geometry(x: Tensor) -> tuple[int, int, int, int, bool]:
    N, C = x.shape[:2]
    S = x.numel() // max(1, N * C)
    n_chunks = triton.cdiv(S, CHUNK)
    return N, C, S, n_chunks, x.numel() + CHUNK >= _INT32_LIMIT


def _statistics(xc: Tensor, weight, bias, eps: float):
    """(mean, rstd, a, b) per plane, in the accumulation dtype, from the moments kernel."""
    N, C, S, n_chunks, wide = _geometry(xc)
    acc = _acc_dtype(xc)
    part = torch.empty((N * C, n_chunks, 2), dtype=acc, device=xc.device)
    _launch(_moments_kernel)[(N * C, n_chunks)](xc, part, S, n_chunks, CHUNK=CHUNK, BLOCK=BLOCK,
                                                 IS_F64=acc == torch.float64, WIDE=wide, num_warps=NUM_WARPS)
    sums = part.double().sum(1)  # chunks in a fixed order, in float64 as the CPU kernel
    shifted_mean = sums[:, 0] / S
    var = (sums[:, 1] / S - shifted_mean * shifted_mean).clamp_min(0)
    mean = (xc.reshape(N * C, S)[:, 0].double() + shifted_mean).to(acc)
    rstd = torch.rsqrt(var + eps).to(acc)
    w = _per_channel(weight, C, 1.0, xc).repeat(N)
    b = _per_channel(bias, C, 0.0, xc).repeat(N)
    a = rstd * w
    return mean, rstd, a, b - mean * a


def _forward_into(x: Tensor, y: Tensor, weight, bias, eps: float, slope: float):
    N, C, S, n_chunks, wide = _geometry(x)
    mean, rstd, a, b = _statistics(x, weight, bias, eps)
    _launch(_apply_kernel)[(N * C, n_chunks)](x, y, a, b, S, slope, CHUNK=CHUNK, BLOCK=BLOCK,
                                               IS_F64=x.dtype == torch.float64, WIDE=wide, num_warps=NUM_WARPS)
    return mean.view(N, C), rstd.view(N, C)


@torch.library.triton_op(FORWARD_OP, mutates_args=())
def _forward_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                negative_slope: float) -> tuple[Tensor, Tensor, Tensor]:
    N, C = x.shape[:2]
    xc = x.contiguous()
    y = torch.empty_like(xc)
    if x.numel() == 0:
        stats = torch.empty((N, C), dtype=_acc_dtype(x), device=x.device)
        return y, stats, stats.clone()
    mean, rstd = _forward_into(xc, y, weight, bias, eps, negative_slope)
    return y.contiguous(memory_format=_layout(x)), mean, rstd


@torch.library.triton_op(INPLACE_OP, mutates_args=("x",))
def _inplace_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                negative_slope: float) -> None:
    if x.numel() == 0:
        return
    if x.is_contiguous():
        _forward_into(x, x, weight, bias, eps, negative_slope)
        return
    xc = x.contiguous()
    _forward_into(xc, xc, weight, bias, eps, negative_slope)
    x.copy_(xc)


@torch.library.triton_op(BACKWARD_OP, mutates_args=())
def _backward_op(grad_y: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Optional[Tensor],
                 bias: Optional[Tensor], negative_slope: float) -> tuple[Tensor, Tensor, Tensor]:
    N, C, S, n_chunks, wide = _geometry(x)
    xc, gc = x.contiguous(), grad_y.contiguous()
    dx = torch.empty_like(xc)
    acc = _acc_dtype(x)
    mean_f, rstd_f = mean.reshape(-1).to(acc).contiguous(), rstd.reshape(-1).to(acc).contiguous()
    w, b = _per_channel(weight, C, 1.0, x), _per_channel(bias, C, 0.0, x)
    sums = torch.zeros((N * C, 2), dtype=torch.float64, device=x.device)
    if x.numel() > 0:
        part = torch.empty((N * C, n_chunks, 2), dtype=acc, device=x.device)
        _launch(_grad_moments_kernel)[(N * C, n_chunks)](
            gc, xc, mean_f, rstd_f, w, b, part, S, C, n_chunks, negative_slope, CHUNK=CHUNK, BLOCK=BLOCK,
            IS_F64=acc == torch.float64, WIDE=wide, num_warps=NUM_WARPS)
        sums = part.double().sum(1)
        c1, c2 = (sums[:, 0] / S).to(acc), (sums[:, 1] / S).to(acc)
        _launch(_grad_apply_kernel)[(N * C, n_chunks)](
            gc, xc, dx, mean_f, rstd_f, w, b, c1, c2, S, C, negative_slope, CHUNK=CHUNK, BLOCK=BLOCK,
            IS_F64=acc == torch.float64, WIDE=wide, num_warps=NUM_WARPS)
    if weight is None:
        empty = x.new_empty((0,))
        return dx.contiguous(memory_format=_layout(x)), empty, empty.clone()
    per_channel = sums.view(N, C, 2).sum(0)
    grad_w = per_channel[:, 1].to(weight.dtype, copy=True)   # no output may alias another
    grad_b = per_channel[:, 0].to(bias.dtype if bias is not None else weight.dtype, copy=True)
    return dx.contiguous(memory_format=_layout(x)), grad_w, grad_b


def _layout(x: Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format
