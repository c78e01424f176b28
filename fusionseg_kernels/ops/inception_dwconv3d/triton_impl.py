"""Triton backend of inception_dwconv3d: fused forward and backward kernels.

Op pair (``torch.library.triton_op``, so torch.compile sees the kernels):
    fusionseg::triton_inception_dwconv3d_forward(x, cube_weight, cube_bias, w_weight, w_bias,
                                                 h_weight, h_bias, d_weight, d_bias) -> y
    fusionseg::triton_inception_dwconv3d_backward(grad_y, x, cube_weight, w_weight, h_weight,
                                                  d_weight) -> (grad_x, 4 weight grads, 4 bias grads)
with fake kernels, autograd, FLOP formulas and an AutocastCUDA rule (the op runs in the autocast
dtype, like the C++ op pair).

Kernels (design notes in docs/triton.md):
- one launch per pass; program = (n, block of BLOCK_C channels of one group, tile of
  BLOCK_D x BLOCK_H x BLOCK_W voxels). The channels decide the work: identity programs copy
  their tile of several channel blocks, conv programs run their group's taps (kernel sizes are
  constexprs; the strips' taps are unrolled, the cube's per kd, the kw taps always). No split,
  no cat, no intermediate tensor.
- backward: one pass on dy. dx = the conv with the flipped kernel (identity: dx = dy); in the same
  pass each program keeps its tile's dW (one per tap) and db sums in registers, reduces them
  once and writes one fp32 partial per tap; a second kernel, one program per (channel, tap),
  sums a column of partials over tiles and batch in a fixed order and writes the gradient.
  No float atomics, so results are deterministic.
- weights and biases travel in one flat table (rounded to x's dtype, then float32), built with
  one cat: few host-side launches per call, which matters for the small deep layers.
- any strides (contiguous, channels_last_3d, sliced views): the kernels take x's and y's strides,
  and y is allocated like x (torch.empty_like), so no .contiguous() copy is made. D, H, W and
  the strides are specialized (divisibility by 16), which gives 16-byte loads and stores.
- 64-bit offsets when the largest element offset could reach 2**31.
- autotuned over the tile shapes of the call's width class, keyed on the sizes, W's stride and
  the kernel sizes (results cached per process, so a network's 28 calls tune once per shape);
  with TRITON_INTERPRET=1 a single fixed config (the interpreter cannot autotune).
  TRITON_INTERPRET and FUSIONSEG_TRITON_AUTOTUNE are read when this module is imported: set
  them before importing fusionseg_kernels.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
from torch import Tensor

import triton
import triton.language as tl

from .registration import register_op_pair

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
FORWARD_OP = "fusionseg::triton_inception_dwconv3d_forward"
BACKWARD_OP = "fusionseg::triton_inception_dwconv3d_backward"
_INT32_LIMIT = 2**31 - 1
# Allocator of y and grad_x. Tests replace it by a NaN-filling one to catch unwritten elements.
_empty_like = torch.empty_like

# Tiles (BLOCK_C channels of one group) x (BLOCK_D, BLOCK_H, BLOCK_W) voxels, 1024 elements per
# program (8 per thread), 4 warps: with the taps unrolled a program holds ~125-145 registers,
# so 3-4 programs fit an SM (2048-element tiles need ~230 and fit 2). W is the contiguous axis,
# so each shape class has tiles whose BLOCK_W is the volume's W (rounded up to a power of two,
# 8..128): no lane is masked off by a narrow W, rows are 16-byte vectors when the layout allows
# it, and W stays inside one warp (the backward's per-tap sums along W are warp shuffles, no
# shared memory). Two candidates per class for the autotuner; _prune_configs keeps the class of
# the call's W. Channel blocks serve the deep layers whose volumes are smaller than one tile.
_GPU_CONFIGS = [
    triton.Config({"BLOCK_C": 1, "BLOCK_D": 1, "BLOCK_H": 8, "BLOCK_W": 128}, num_warps=4),
    triton.Config({"BLOCK_C": 1, "BLOCK_D": 2, "BLOCK_H": 4, "BLOCK_W": 128}, num_warps=4),
    triton.Config({"BLOCK_C": 1, "BLOCK_D": 2, "BLOCK_H": 8, "BLOCK_W": 64}, num_warps=4),
    triton.Config({"BLOCK_C": 1, "BLOCK_D": 1, "BLOCK_H": 16, "BLOCK_W": 64}, num_warps=4),
    triton.Config({"BLOCK_C": 1, "BLOCK_D": 2, "BLOCK_H": 16, "BLOCK_W": 32}, num_warps=4),
    triton.Config({"BLOCK_C": 1, "BLOCK_D": 4, "BLOCK_H": 8, "BLOCK_W": 32}, num_warps=4),
    triton.Config({"BLOCK_C": 2, "BLOCK_D": 4, "BLOCK_H": 8, "BLOCK_W": 16}, num_warps=4),
    triton.Config({"BLOCK_C": 1, "BLOCK_D": 4, "BLOCK_H": 16, "BLOCK_W": 16}, num_warps=4),
    # W <= 8: a tile row is one vector, so every thread holds several rows and the backward's
    # per-row tap sums with them; 512 elements keep that within the registers
    triton.Config({"BLOCK_C": 2, "BLOCK_D": 4, "BLOCK_H": 8, "BLOCK_W": 8}, num_warps=4),
    triton.Config({"BLOCK_C": 1, "BLOCK_D": 4, "BLOCK_H": 8, "BLOCK_W": 8}, num_warps=2),
]
# Interpreter: one config with large blocks, so the small test shapes take few programs (each
# Triton operation costs the interpreter about a millisecond, whatever the block size).
_INTERPRETER_CONFIGS = [
    triton.Config({"BLOCK_C": 4, "BLOCK_D": 8, "BLOCK_H": 16, "BLOCK_W": 16}, num_warps=4)]
# FUSIONSEG_TRITON_AUTOTUNE=0: the first config of the call's shape class only (no tuning, half
# the compiles), used by bench/gpu_check.sh for the GPU tests; the sweep tunes every class.
AUTOTUNE = os.environ.get("FUSIONSEG_TRITON_AUTOTUNE", "1") != "0"
CONFIGS = _INTERPRETER_CONFIGS if INTERPRET else _GPU_CONFIGS
# Tuned once per distinct value of these (Triton's autotuner adds the tensor arguments' dtypes):
# the sizes, the layout (W's stride: 1 for contiguous NCDHW, C for channels_last_3d) and the
# kernel sizes, which are constexprs and change the code.
AUTOTUNE_KEY = ["C", "D", "H", "W", "sxw", "K0D", "K0H", "K0W", "K1D", "K1H", "K1W",
                "K2D", "K2H", "K2W", "K3D", "K3H", "K3W"]


def _block_w_class(W) -> int:
    """BLOCK_W of the configs meant for a volume of width W."""
    return min(128, max(8, triton.next_power_of_2(int(W))))


def _prune_configs(configs, named_args, **kwargs):
    """The configs of W's shape class (all of them if none fits, e.g. the interpreter's);
    without autotuning only the first."""
    mine = [c for c in configs if c.kwargs["BLOCK_W"] == _block_w_class(named_args["W"])]
    mine = mine or list(configs)
    return mine if AUTOTUNE else mine[:1]


_PRUNE = {"early_config_prune": _prune_configs}


def _autotune_bench(kernel_call, quantiles):
    # Shorter than Triton's default (25 ms warm-up, 100 ms timing per config): the 28 layer
    # shapes x 3 dtypes x 2 kernels are tuned once per process, and the medians still separate
    # configs that differ by more than a few percent.
    return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


# Decided once at import (both inputs are fixed by then), so that available() is a constant
# when torch.compile traces the public function's backend check.
_AVAILABLE = ((True, "") if INTERPRET or torch.cuda.is_available() else
              (False, "the triton backend needs a CUDA GPU (or TRITON_INTERPRET=1 set before "
                      "importing fusionseg_kernels, to run it on CPU tensors through the interpreter)"))


def available() -> tuple[bool, str]:
    """(usable, why not): triton imports; it runs on CUDA tensors or, with TRITON_INTERPRET=1, on CPU."""
    return _AVAILABLE


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _program_coords(pid, D, H, W, IDENT, GC, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, INT64: tl.constexpr):
    """Program pid -> its tile of (n, channel block, d, h, w).

    Channel blocks never straddle groups: ceil(IDENT / (_ID_BLOCKS * BLOCK_C)) identity blocks
    (an identity program copies _ID_BLOCKS channel blocks: more bytes in flight for the same
    registers), then ceil(GC / BLOCK_C) blocks per conv group. Programs of one (n, channel block) are adjacent, so
    neighbouring tiles (whose halos overlap) run close together in time and share L2.
    Returns (tile, n_tiles, n, is_identity, g, first, ch, ch_ok, offs_d, offs_h, offs_w) where
    first is the block's first channel and ch the conv channels within the group, shaped
    [BC, 1, 1, 1] (identity programs use first), and offs_* are [1, BD, 1, 1], [1, 1, BH, 1],
    [1, 1, 1, BW]."""
    tiles_w = tl.cdiv(W, BLOCK_W)
    tiles_h = tl.cdiv(H, BLOCK_H)
    n_tiles = tl.cdiv(D, BLOCK_D) * tiles_h * tiles_w
    blocks_id = tl.cdiv(IDENT, _ID_BLOCKS * BLOCK_C)
    blocks_g = tl.cdiv(GC, BLOCK_C)
    blocks = blocks_id + 4 * blocks_g
    tile = pid % n_tiles
    rest = pid // n_tiles
    cb = rest % blocks
    n = rest // blocks
    is_identity = cb < blocks_id
    j = tl.where(is_identity, 0, cb - blocks_id)
    g = tl.where(is_identity, 0, j // tl.maximum(blocks_g, 1))
    first = tl.where(is_identity, cb * _ID_BLOCKS, j - g * blocks_g) * BLOCK_C
    limit = tl.where(is_identity, IDENT, GC)
    ch = first + tl.arange(0, BLOCK_C)[:, None, None, None]
    ch_ok = ch < limit
    tw = tile % tiles_w
    th = (tile // tiles_w) % tiles_h
    td = tile // (tiles_w * tiles_h)
    offs_d = td * BLOCK_D + tl.arange(0, BLOCK_D)[None, :, None, None]
    offs_h = th * BLOCK_H + tl.arange(0, BLOCK_H)[None, None, :, None]
    offs_w = tw * BLOCK_W + tl.arange(0, BLOCK_W)[None, None, None, :]
    if INT64:  # every offset computed from these is then 64-bit
        n = n.to(tl.int64)
        first = first.to(tl.int64)
        ch = ch.to(tl.int64)
        offs_d = offs_d.to(tl.int64)
        offs_h = offs_h.to(tl.int64)
        offs_w = offs_w.to(tl.int64)
    return tile, n_tiles, n, is_identity, g, first, ch, ch_ok, offs_d, offs_h, offs_w


# Channel blocks one identity program copies.
_ID_BLOCKS_N = 4
_ID_BLOCKS = tl.constexpr(_ID_BLOCKS_N)


@triton.jit
def _copy_identity(src_ptr, ssn, ssc, ssd, ssh, ssw, dst_ptr, sdn, sdc, sdd, sdh, sdw, n, first,
                   IDENT, offs_d, offs_h, offs_w, D, H, W, ID_C: tl.constexpr):
    """dst = src on channels first .. first + ID_C - 1 (< IDENT) of sample n, one tile: one load
    of the whole block (every load issued before the first store)."""
    chi = first + tl.arange(0, ID_C)[:, None, None, None]
    m = (chi < IDENT) & (offs_d < D) & (offs_h < H) & (offs_w < W)
    src = src_ptr + n * ssn + (chi * ssc + offs_d * ssd + offs_h * ssh + offs_w * ssw)
    dst = dst_ptr + n * sdn + (chi * sdc + offs_d * sdd + offs_h * sdh + offs_w * sdw)
    tl.store(dst, tl.load(src, mask=m), mask=m)


@triton.jit
def _axis_ok(offs, size, shift):
    """offs + shift inside [0, size), tested on the small per-axis index vector."""
    return (offs >= -shift) & (offs < size - shift)


@triton.jit
def _w_tap_mask(m_dh, offs_w, W, SW: tl.constexpr):
    """m_dh restricted to w + SW inside [0, W); only the bound the shift can cross is tested."""
    if SW > 0:
        return m_dh & (offs_w < W - SW)
    elif SW < 0:
        return m_dh & (offs_w >= -SW)
    else:
        return m_dh


# The interpreter (triton 3.8) truncates float32 -> bfloat16 casts instead of rounding to nearest
# even as the GPU does, which doubles bf16 errors; in interpreter mode the rounding is done by hand.
_ROUND_BF16_BY_HAND = tl.constexpr(INTERPRET)


@triton.jit
def _to_output(v, out_ty: tl.constexpr):
    """Cast the accumulator to the output dtype (round to nearest even when narrowing)."""
    if _ROUND_BF16_BY_HAND and out_ty == tl.bfloat16 and v.dtype == tl.float32:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(out_ty)
    else:
        return v.to(out_ty)


@triton.jit
def _group_params(p_ptr, g, ch, ch_ok, GC, BOFF0, BOFF1, BOFF2, BOFF3,
                  T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr, T3: tl.constexpr):
    """Weight rows and biases of channels ch of group g in the parameter table: the four
    weights flattened one after the other (gc * T_g values each), then the biases given
    (BOFFg: offset of group g's gc biases, -1 for None)."""
    t_g = tl.where(g == 0, T0, tl.where(g == 1, T1, tl.where(g == 2, T2, T3)))
    w_off = GC * tl.where(g == 0, 0, tl.where(g == 1, T0, tl.where(g == 2, T0 + T1, T0 + T1 + T2)))
    b_off = tl.where(g == 0, BOFF0, tl.where(g == 1, BOFF1, tl.where(g == 2, BOFF2, BOFF3)))
    w_rows = p_ptr + (w_off + ch * t_g)
    bias = tl.load(p_ptr + (b_off + ch), mask=ch_ok & (b_off >= 0), other=0.0)
    return w_rows, bias


# Taps unrolled per loop iteration at most: the strips (11 taps) are unrolled entirely, so all
# their loads can be in flight together; the cube loops over kd with its 9 (kh, kw) taps
# unrolled; planes (121 taps) loop over (kd, kh). More unrolled loads than this hold more
# registers than a program has (each tap's load is a whole tile) and spill.
_MAX_UNROLLED_TAPS = tl.constexpr(11)


@triton.jit
def _fwd_tap_row(acc, p_dh, w_tap, ch_ok, m_dh, offs_w, W, sxw, KW: tl.constexpr):
    """acc += the KW taps along w of one (kd, kh) row (constant offsets fold into the loads)."""
    for kw in tl.static_range(KW):
        m = _w_tap_mask(m_dh, offs_w, W, kw - KW // 2)
        v = tl.load(p_dh + (kw - KW // 2) * sxw, mask=m, other=0.0)
        # masked: rows of channels past the group's end (a partial channel block) would read
        # past the parameter table
        acc += v.to(acc.dtype) * tl.load(w_tap + kw, mask=ch_ok, other=0.0)
    return acc


@triton.jit
def _conv_tile(x_tile, sxd, sxh, sxw, y_tile, w_rows, bias, ch_ok, offs_d, offs_h, offs_w, mask,
               D, H, W, KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
               BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
               BLOCK_W: tl.constexpr):
    """y = bias + sum over taps (kd, kh, kw) of w * x[d + kd - KD//2, h + kh - KH//2, w + kw - KW//2].

    Unrolled taps (see _MAX_UNROLLED_TAPS) have constant shifts and bounds tests (done on the
    small per-axis index vectors); the kw taps along the contiguous axis are always unrolled."""
    acc_ty = w_rows.dtype.element_ty  # float32 (float64 for float64 inputs)
    acc = tl.zeros([BLOCK_C, BLOCK_D, BLOCK_H, BLOCK_W], dtype=acc_ty) + bias
    if KD * KH * KW <= _MAX_UNROLLED_TAPS:  # the strips: every tap unrolled
        for kd in tl.static_range(KD):
            m_d = mask & _axis_ok(offs_d, D, kd - KD // 2)
            for kh in tl.static_range(KH):
                m_dh = m_d & _axis_ok(offs_h, H, kh - KH // 2)
                p_dh = x_tile + ((kd - KD // 2) * sxd + (kh - KH // 2) * sxh)
                acc = _fwd_tap_row(acc, p_dh, w_rows + (kd * KH + kh) * KW, ch_ok, m_dh, offs_w,
                                   W, sxw, KW)
    elif KH * KW <= _MAX_UNROLLED_TAPS:  # the cube: a loop over kd, the (kh, kw) taps unrolled
        for kd in range(KD):
            m_d = mask & _axis_ok(offs_d, D, kd - KD // 2)
            for kh in tl.static_range(KH):
                m_dh = m_d & _axis_ok(offs_h, H, kh - KH // 2)
                p_dh = x_tile + ((kd - KD // 2) * sxd + (kh - KH // 2) * sxh)
                acc = _fwd_tap_row(acc, p_dh, w_rows + (kd * KH + kh) * KW, ch_ok, m_dh, offs_w,
                                   W, sxw, KW)
    else:  # planes: a loop over (kd, kh), the kw taps unrolled
        for kd in range(KD):
            m_d = mask & _axis_ok(offs_d, D, kd - KD // 2)
            for kh in range(KH):
                m_dh = m_d & _axis_ok(offs_h, H, kh - KH // 2)
                p_dh = x_tile + ((kd - KD // 2) * sxd + (kh - KH // 2) * sxh)
                acc = _fwd_tap_row(acc, p_dh, w_rows + (kd * KH + kh) * KW, ch_ok, m_dh, offs_w,
                                   W, sxw, KW)
    tl.store(y_tile, _to_output(acc, y_tile.dtype.element_ty), mask=mask)


# D, H, W are specialized (Triton then knows when they are multiples of 16, which lets it prove
# a 16-byte row vector all in or all out of the volume: 128-bit loads and stores); the channel
# counts and bias offsets are not (they change between layers without changing the code).
@triton.autotune(configs=CONFIGS, key=AUTOTUNE_KEY, prune_configs_by=_PRUNE,
                 do_bench=_autotune_bench)
@triton.jit(do_not_specialize=["C", "IDENT", "GC", "BOFF0", "BOFF1", "BOFF2", "BOFF3"])
def _idc_forward_kernel(
    x_ptr, y_ptr, p_ptr,
    C, D, H, W, IDENT, GC, BOFF0, BOFF1, BOFF2, BOFF3,
    sxn, sxc, sxd, sxh, sxw, syn, syc, syd, syh, syw,
    K0D: tl.constexpr, K0H: tl.constexpr, K0W: tl.constexpr,
    K1D: tl.constexpr, K1H: tl.constexpr, K1W: tl.constexpr,
    K2D: tl.constexpr, K2H: tl.constexpr, K2W: tl.constexpr,
    K3D: tl.constexpr, K3H: tl.constexpr, K3W: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Grid: N * channel blocks * n_tiles programs; each writes its tile of y for its channels:
    a copy for identity channels, its group's depthwise conv for the others."""
    pid = tl.program_id(0)
    tile, n_tiles, n, is_identity, g, first, ch, ch_ok, offs_d, offs_h, offs_w = _program_coords(
        pid, D, H, W, IDENT, GC, BLOCK_C, BLOCK_D, BLOCK_H, BLOCK_W, INT64)
    mask = ch_ok & (offs_d < D) & (offs_h < H) & (offs_w < W)
    c = tl.where(is_identity, ch, IDENT + g * GC + ch)  # channel in x
    x_tile = x_ptr + n * sxn + (c * sxc + offs_d * sxd + offs_h * sxh + offs_w * sxw)
    y_tile = y_ptr + n * syn + (c * syc + offs_d * syd + offs_h * syh + offs_w * syw)
    if is_identity:
        _copy_identity(x_ptr, sxn, sxc, sxd, sxh, sxw, y_ptr, syn, syc, syd, syh, syw, n, first,
                       IDENT, offs_d, offs_h, offs_w, D, H, W, _ID_BLOCKS * BLOCK_C)
    else:
        w_rows, bias = _group_params(p_ptr, g, ch, ch_ok, GC, BOFF0, BOFF1, BOFF2, BOFF3,
                                     K0D * K0H * K0W, K1D * K1H * K1W, K2D * K2H * K2W,
                                     K3D * K3H * K3W)
        if g == 0:
            _conv_tile(x_tile, sxd, sxh, sxw, y_tile, w_rows, bias, ch_ok, offs_d, offs_h, offs_w, mask,
                       D, H, W, K0D, K0H, K0W, BLOCK_C, BLOCK_D, BLOCK_H, BLOCK_W)
        elif g == 1:
            _conv_tile(x_tile, sxd, sxh, sxw, y_tile, w_rows, bias, ch_ok, offs_d, offs_h, offs_w, mask,
                       D, H, W, K1D, K1H, K1W, BLOCK_C, BLOCK_D, BLOCK_H, BLOCK_W)
        elif g == 2:
            _conv_tile(x_tile, sxd, sxh, sxw, y_tile, w_rows, bias, ch_ok, offs_d, offs_h, offs_w, mask,
                       D, H, W, K2D, K2H, K2W, BLOCK_C, BLOCK_D, BLOCK_H, BLOCK_W)
        else:
            _conv_tile(x_tile, sxd, sxh, sxw, y_tile, w_rows, bias, ch_ok, offs_d, offs_h, offs_w, mask,
                       D, H, W, K3D, K3H, K3W, BLOCK_C, BLOCK_D, BLOCK_H, BLOCK_W)


@triton.jit
def _bwd_tap_row(dx, acc, g_c, pg_dh, px_dh, w_rows, t0, slots, ch_ok, m_dh, offs_w, W, sgw, sxw,
                 T: tl.constexpr, KW: tl.constexpr):
    """One (kd, kh) row of taps of the backward: dx += dy(shifted) * w(flipped tap), and the
    tap's dW contribution sum(dy * x(shifted)) summed along w only (inside a warp) into its
    slot of acc ([BC, BD, BH, TAPS_P]); the sum over the rest of the tile is done once per
    program, after the last tap."""
    for kw in tl.static_range(KW):
        m = _w_tap_mask(m_dh, offs_w, W, kw - KW // 2)
        g_s = tl.load(pg_dh + (kw - KW // 2) * sgw, mask=m, other=0.0)
        x_s = tl.load(px_dh + (kw - KW // 2) * sxw, mask=m, other=0.0)
        # y[p] = sum_t w[t] x[p + s_t]  =>  dx[q] = sum_t w[T-1-t] dy[q + s_t]
        # (the flipped kernel: tap T-1-t has the opposite shift of tap t)
        dx += g_s.to(dx.dtype) * tl.load(w_rows + (T - 1 - (t0 + kw)), mask=ch_ok, other=0.0)
        row_sum = tl.sum(g_c * x_s.to(dx.dtype), axis=3, keep_dims=True)  # [BC, BD, BH, 1]
        acc += tl.where(slots == t0 + kw, row_sum, 0.0)
    return dx, acc


@triton.jit
def _conv_backward_tile(g_tile, sgd, sgh, sgw, x_tile, sxd, sxh, sxw, dx_tile, w_rows, part_rows,
                        rows_total, ch_ok, offs_d, offs_h, offs_w, mask, D, H, W,
                        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, TAPS_P: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
                        BLOCK_W: tl.constexpr):
    """dx = dy convolved with the flipped kernel; the tile's partial dW[t] = sum dy * x(shifted by
    tap t) goes to slot t of its partials column, its partial db = sum dy to slot T
    (T = KD*KH*KW); slot s of channel row r is at part_rows[r] + s * rows_total. Taps as in
    _conv_tile. The per-tap sums stay in registers ([BC, BD, BH, TAPS_P], summed along w by
    warp shuffles) and are reduced over the tile once, at the end: one block-wide reduction
    per program instead of one per tap."""
    T: tl.constexpr = KD * KH * KW
    acc_ty = w_rows.dtype.element_ty  # float32 (float64 for float64 inputs)
    g_c = tl.load(g_tile, mask=mask, other=0.0).to(acc_ty)
    dx = tl.zeros([BLOCK_C, BLOCK_D, BLOCK_H, BLOCK_W], dtype=acc_ty)
    slots = tl.arange(0, TAPS_P)[None, None, None, :]
    acc = tl.where(slots == T, tl.sum(g_c, axis=3, keep_dims=True), 0.0)  # db in slot T
    if T <= _MAX_UNROLLED_TAPS:  # loops as in _conv_tile
        for kd in tl.static_range(KD):
            m_d = mask & _axis_ok(offs_d, D, kd - KD // 2)
            for kh in tl.static_range(KH):
                m_dh = m_d & _axis_ok(offs_h, H, kh - KH // 2)
                dx, acc = _bwd_tap_row(
                    dx, acc, g_c, g_tile + ((kd - KD // 2) * sgd + (kh - KH // 2) * sgh),
                    x_tile + ((kd - KD // 2) * sxd + (kh - KH // 2) * sxh), w_rows,
                    (kd * KH + kh) * KW, slots, ch_ok, m_dh, offs_w, W, sgw, sxw, T, KW)
    elif KH * KW <= _MAX_UNROLLED_TAPS:
        for kd in range(KD):
            m_d = mask & _axis_ok(offs_d, D, kd - KD // 2)
            for kh in tl.static_range(KH):
                m_dh = m_d & _axis_ok(offs_h, H, kh - KH // 2)
                dx, acc = _bwd_tap_row(
                    dx, acc, g_c, g_tile + ((kd - KD // 2) * sgd + (kh - KH // 2) * sgh),
                    x_tile + ((kd - KD // 2) * sxd + (kh - KH // 2) * sxh), w_rows,
                    (kd * KH + kh) * KW, slots, ch_ok, m_dh, offs_w, W, sgw, sxw, T, KW)
    else:
        for kd in range(KD):
            m_d = mask & _axis_ok(offs_d, D, kd - KD // 2)
            for kh in range(KH):
                m_dh = m_d & _axis_ok(offs_h, H, kh - KH // 2)
                dx, acc = _bwd_tap_row(
                    dx, acc, g_c, g_tile + ((kd - KD // 2) * sgd + (kh - KH // 2) * sgh),
                    x_tile + ((kd - KD // 2) * sxd + (kh - KH // 2) * sxh), w_rows,
                    (kd * KH + kh) * KW, slots, ch_ok, m_dh, offs_w, W, sgw, sxw, T, KW)
    tl.store(dx_tile, _to_output(dx, dx_tile.dtype.element_ty), mask=mask)
    sums = tl.sum(tl.sum(acc, axis=2), axis=1)  # [BC, TAPS_P]
    s2 = tl.arange(0, TAPS_P)[None, :]
    tl.store(part_rows[:, None] + s2 * rows_total, sums,
             mask=tl.reshape(ch_ok, [BLOCK_C])[:, None] & (s2 <= T))


@triton.autotune(configs=CONFIGS, key=AUTOTUNE_KEY, prune_configs_by=_PRUNE,
                 do_bench=_autotune_bench)
@triton.jit(do_not_specialize=["N", "C", "IDENT", "GC", "max_tiles", "part_stride"])
def _idc_backward_kernel(
    g_ptr, x_ptr, dx_ptr, p_ptr, part_ptr,
    N, C, D, H, W, IDENT, GC, max_tiles, part_stride,
    sgn, sgc, sgd, sgh, sgw, sxn, sxc, sxd, sxh, sxw, sdn, sdc, sdd, sdh, sdw,
    K0D: tl.constexpr, K0H: tl.constexpr, K0W: tl.constexpr,
    K1D: tl.constexpr, K1H: tl.constexpr, K1W: tl.constexpr,
    K2D: tl.constexpr, K2H: tl.constexpr, K2W: tl.constexpr,
    K3D: tl.constexpr, K3H: tl.constexpr, K3W: tl.constexpr,
    TAPS_P: tl.constexpr, INT64: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Grid as the forward. Partials: part_stride columns of N * max_tiles floats per conv
    channel cc, slot-major (element ((cc * part_stride + slot) * N + n) * max_tiles + tile), so
    the second stage reads each (channel, slot) column contiguously. max_tiles is the most
    tiles any config makes, and each program also zeroes the entries tile + k * n_tiles <
    max_tiles its config leaves unused, so the buffer is fully defined whatever config ran
    (the autotuner runs several on the same buffer)."""
    pid = tl.program_id(0)
    tile, n_tiles, n, is_identity, g, first, ch, ch_ok, offs_d, offs_h, offs_w = _program_coords(
        pid, D, H, W, IDENT, GC, BLOCK_C, BLOCK_D, BLOCK_H, BLOCK_W, INT64)
    mask = ch_ok & (offs_d < D) & (offs_h < H) & (offs_w < W)
    c = tl.where(is_identity, ch, IDENT + g * GC + ch)
    g_tile = g_ptr + n * sgn + (c * sgc + offs_d * sgd + offs_h * sgh + offs_w * sgw)
    dx_tile = dx_ptr + n * sdn + (c * sdc + offs_d * sdd + offs_h * sdh + offs_w * sdw)
    if is_identity:
        _copy_identity(g_ptr, sgn, sgc, sgd, sgh, sgw, dx_ptr, sdn, sdc, sdd, sdh, sdw, n, first,
                       IDENT, offs_d, offs_h, offs_w, D, H, W, _ID_BLOCKS * BLOCK_C)
    else:
        cc = tl.reshape(g * GC + ch, [BLOCK_C])  # conv channel
        rows_total = N * max_tiles
        col0 = cc * part_stride * rows_total + n * max_tiles  # [BC]: slot 0 of this sample
        part_rows = part_ptr + (col0 + tile)
        slots = tl.arange(0, TAPS_P)[None, :]
        zero_mask = tl.reshape(ch_ok, [BLOCK_C])[:, None] & (slots < part_stride)
        for extra in range(tile + n_tiles, max_tiles, n_tiles):
            tl.store(part_ptr + (col0[:, None] + extra + slots * rows_total),
                     tl.zeros([BLOCK_C, TAPS_P], dtype=part_ptr.dtype.element_ty), mask=zero_mask)
        x_tile = x_ptr + n * sxn + (c * sxc + offs_d * sxd + offs_h * sxh + offs_w * sxw)
        w_rows, _ = _group_params(p_ptr, g, ch, ch_ok, GC, -1, -1, -1, -1,
                                  K0D * K0H * K0W, K1D * K1H * K1W, K2D * K2H * K2W,
                                  K3D * K3H * K3W)
        if g == 0:
            _conv_backward_tile(g_tile, sgd, sgh, sgw, x_tile, sxd, sxh, sxw, dx_tile, w_rows,
                                part_rows, rows_total, ch_ok, offs_d, offs_h, offs_w, mask, D, H, W,
                                K0D, K0H, K0W, TAPS_P, BLOCK_C, BLOCK_D, BLOCK_H, BLOCK_W)
        elif g == 1:
            _conv_backward_tile(g_tile, sgd, sgh, sgw, x_tile, sxd, sxh, sxw, dx_tile, w_rows,
                                part_rows, rows_total, ch_ok, offs_d, offs_h, offs_w, mask, D, H, W,
                                K1D, K1H, K1W, TAPS_P, BLOCK_C, BLOCK_D, BLOCK_H, BLOCK_W)
        elif g == 2:
            _conv_backward_tile(g_tile, sgd, sgh, sgw, x_tile, sxd, sxh, sxw, dx_tile, w_rows,
                                part_rows, rows_total, ch_ok, offs_d, offs_h, offs_w, mask, D, H, W,
                                K2D, K2H, K2W, TAPS_P, BLOCK_C, BLOCK_D, BLOCK_H, BLOCK_W)
        else:
            _conv_backward_tile(g_tile, sgd, sgh, sgw, x_tile, sxd, sxh, sxw, dx_tile, w_rows,
                                part_rows, rows_total, ch_ok, offs_d, offs_h, offs_w, mask, D, H, W,
                                K3D, K3H, K3W, TAPS_P, BLOCK_C, BLOCK_D, BLOCK_H, BLOCK_W)


@triton.jit
def _store_group_grad(gw_ptr, gb_ptr, ch, slot, total, T: tl.constexpr):
    """Slot < T: weight tap `slot` of channel ch; slot == T: its bias; slots past T: nothing."""
    if slot < T:
        tl.store(gw_ptr + ch * T + slot, _to_output(total, gw_ptr.dtype.element_ty))
    elif slot == T:
        tl.store(gb_ptr + ch, _to_output(total, gb_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=["GC", "part_stride"])
def _idc_weight_grad_kernel(part_ptr, gw0, gw1, gw2, gw3, gb0, gb1, gb2, gb3, GC, rows,
                            part_stride, T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
                            T3: tl.constexpr, ROWS_BLOCK: tl.constexpr):
    """Second stage of dW/db: program (cc, slot) sums one column of partials (every sample and
    tile of conv channel cc) in a fixed order and writes that weight tap (or bias) gradient in
    the weights' dtype. 4*gc*part_stride programs (a few per SM); each column is contiguous.
    Deterministic: no atomics, the same order every run. Columns past a group's bias slot
    (slot > T of a strip group, whose T is under the cube's) were never written: not read."""
    pid = tl.program_id(0)
    cc = pid // part_stride
    slot = pid % part_stride
    g = cc // GC
    ch = cc % GC
    taps = tl.where(g == 0, T0, tl.where(g == 1, T1, tl.where(g == 2, T2, T3)))
    column_rows = tl.where(slot <= taps, rows, 0)
    base = part_ptr + pid.to(tl.int64) * rows
    acc = tl.zeros([ROWS_BLOCK], dtype=part_ptr.dtype.element_ty)
    for r0 in range(0, column_rows, ROWS_BLOCK):
        r = r0 + tl.arange(0, ROWS_BLOCK)
        acc += tl.load(base + r, mask=r < rows, other=0.0)
    total = tl.sum(acc, axis=0)
    if g == 0:
        _store_group_grad(gw0, gb0, ch, slot, total, T0)
    elif g == 1:
        _store_group_grad(gw1, gb1, ch, slot, total, T1)
    elif g == 2:
        _store_group_grad(gw2, gb2, ch, slot, total, T2)
    else:
        _store_group_grad(gw3, gb3, ch, slot, total, T3)


# --------------------------------------------------------------------------------------------
# host side
# --------------------------------------------------------------------------------------------


def _launch(kernel):
    # Eager calls (triton_op runs the body with wrap_triton disabled) and the interpreter call
    # the kernel directly; under torch.compile / FunctionalTensorMode tracing, wrap_triton makes
    # the launch visible to the compiler.
    if INTERPRET:
        return kernel
    return torch.library.wrap_triton(kernel)


def _kernel_sizes(weights):
    ks = []
    for w in weights:
        ks += [int(s) for s in w.shape[2:]]
    return ks


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _param_table(weights, biases, dtype, device):
    """One flat table in the accumulation dtype (float32; float64 for float64 inputs): the four
    weights flattened in (kd, kh, kw) order, then the biases given; every value rounded to x's
    dtype first (the op's contract). One cat and at most two casts: few launches per call.
    Returns (table, bias offsets per group, -1 for None)."""
    gc = weights[0].shape[0]
    parts = [w.detach().reshape(-1) for w in weights]
    offsets, at = [], gc * sum(math.prod(w.shape[2:]) for w in weights)
    for b in biases:
        if b is None:
            offsets.append(-1)
        else:
            parts.append(b.detach().reshape(-1))
            offsets.append(at)
            at += gc
    if at == 0:  # gc == 0: the kernels never read it, but a pointer must be valid
        return torch.zeros(1, dtype=_acc_dtype(dtype), device=device), offsets
    table = torch.cat(parts).to(dtype).to(_acc_dtype(dtype))
    return table, offsets


def _needs_int64(*tensors) -> bool:
    for t in tensors:
        span = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0)
        if span >= _INT32_LIMIT or t.numel() >= _INT32_LIMIT:
            return True
    return False


def _n_tiles(D, H, W, meta):
    return (triton.cdiv(D, meta["BLOCK_D"]) * triton.cdiv(H, meta["BLOCK_H"])
            * triton.cdiv(W, meta["BLOCK_W"]))


def _grid_size(N, C, gc, D, H, W, meta):
    bc = meta["BLOCK_C"]
    blocks = triton.cdiv(C - 4 * gc, _ID_BLOCKS_N * bc) + 4 * triton.cdiv(gc, bc)
    return N * blocks * _n_tiles(D, H, W, meta)


def _forward_launch_args(x, y, weights, biases):
    """(grid, positional args, keyword args) of _idc_forward_kernel for y = op(x)."""
    N, C, D, H, W = x.shape
    gc = weights[0].shape[0]
    table, bias_offsets = _param_table(weights, biases, x.dtype, x.device)

    def grid(meta):
        return (_grid_size(N, C, gc, D, H, W, meta),)

    args = (x, y, table, C, D, H, W, C - 4 * gc, gc, *bias_offsets, *x.stride(), *y.stride(),
            *_kernel_sizes(weights))
    return grid, args, {"INT64": _needs_int64(x, y)}


def _backward_launch_args(grad_y, x, grad_x, weights, configs):
    """(grid, args, kwargs, partials, t_max) of _idc_backward_kernel; `configs` (those of x's
    shape class among them) size the partials."""
    N, C, D, H, W = x.shape
    gc = weights[0].shape[0]
    table, _ = _param_table(weights, (None,) * 4, x.dtype, x.device)
    # int(): kernel sizes are constexprs anyway (a guard, not a symbol, under dynamic shapes)
    t_max = int(max(math.prod(w.shape[2:]) for w in weights))
    # the autotuner times only the configs of W's shape class (the same pruning)
    mine = _prune_configs(configs, {"W": W}) if configs is CONFIGS else configs
    max_tiles = max(_n_tiles(D, H, W, cfg.kwargs) for cfg in mine)
    part_stride = t_max + 1  # a group with T taps fills slots 0..T-1 (dW) and T (db)
    # Every element the second stage reads is written by the kernel (a partial or an explicit
    # zero): no memset needed. Slots past a strip group's bias stay unwritten and unread.
    # Slot-major: the second stage reads one contiguous column per (channel, slot).
    partials = torch.empty((4 * gc, part_stride, N * max_tiles), dtype=table.dtype,
                           device=x.device)

    def grid(meta):
        return (_grid_size(N, C, gc, D, H, W, meta),)

    args = (grad_y, x, grad_x, table, partials, N, C, D, H, W, C - 4 * gc, gc, max_tiles,
            part_stride, *grad_y.stride(), *x.stride(), *grad_x.stride(), *_kernel_sizes(weights))
    kwargs = {"TAPS_P": triton.next_power_of_2(part_stride),
              "INT64": _needs_int64(grad_y, x, grad_x)}
    return grid, args, kwargs, partials, t_max


def _weight_grad_launch_args(partials, weights):
    """(grid, args, kwargs, grad weights, grad biases) of the second stage of dW/db: one
    program per (conv channel, slot) column of the partials."""
    gc = weights[0].shape[0]
    grad_w = [torch.empty(w.shape, dtype=w.dtype, device=w.device) for w in weights]
    grad_b = [torch.empty((gc,), dtype=w.dtype, device=w.device) for w in weights]
    taps = [int(math.prod(w.shape[2:])) for w in weights]
    cols, part_stride, rows = partials.shape
    args = (partials, *grad_w, *grad_b, gc, rows, part_stride, *taps)
    kwargs = {"ROWS_BLOCK": 512 if rows >= 512 else max(16, triton.next_power_of_2(rows))}
    return (cols * part_stride,), args, kwargs, grad_w, grad_b

@torch.library.triton_op(FORWARD_OP, mutates_args=())
def _forward_op(x: Tensor, cube_weight: Tensor, cube_bias: Optional[Tensor], w_weight: Tensor,
                w_bias: Optional[Tensor], h_weight: Tensor, h_bias: Optional[Tensor],
                d_weight: Tensor, d_bias: Optional[Tensor]) -> Tensor:
    weights = (cube_weight, w_weight, h_weight, d_weight)
    biases = (cube_bias, w_bias, h_bias, d_bias)
    y = _empty_like(x)
    if x.numel() == 0:
        return y
    grid, args, kwargs = _forward_launch_args(x, y, weights, biases)
    _launch(_idc_forward_kernel)[grid](*args, **kwargs)
    return y


@torch.library.triton_op(BACKWARD_OP, mutates_args=())
def _backward_op(grad_y: Tensor, x: Tensor, cube_weight: Tensor, w_weight: Tensor,
                 h_weight: Tensor, d_weight: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    weights = (cube_weight, w_weight, h_weight, d_weight)
    gc = cube_weight.shape[0]
    grad_x = _empty_like(x)
    if x.numel() == 0 or gc == 0:
        if x.numel() > 0:  # gc == 0: the op is the identity
            grad_x.copy_(grad_y)
        grad_w = [torch.zeros_like(w, memory_format=torch.contiguous_format) for w in weights]
        grad_b = [w.new_zeros((gc,)) for w in weights]
        return (grad_x, *grad_w, *grad_b)
    grid, args, kwargs, partials, _ = _backward_launch_args(grad_y, x, grad_x, weights, CONFIGS)
    _launch(_idc_backward_kernel)[grid](*args, **kwargs)
    grid, args, kwargs, grad_w, grad_b = _weight_grad_launch_args(partials, weights)
    _launch(_idc_weight_grad_kernel)[grid](*args, **kwargs)
    return (grad_x, *grad_w, *grad_b)


def run_kernels_with_config(x, args, grad_y, config):
    """Forward and backward kernels launched with one given config, bypassing the autotuner
    (same specialization and options as its launches, so Triton's on-disk cache is shared).
    Used to compile the configs in parallel processes (bench_gpu_kernels.py --precompile).
    args: the op's eight weight/bias arguments. Returns (y, grad_x, grad weights, grad biases)."""
    weights, biases = tuple(args[0::2]), tuple(args[1::2])
    y = torch.empty_like(x)
    grid, fargs, kwargs = _forward_launch_args(x, y, weights, biases)
    _idc_forward_kernel.fn[grid](*fargs, **kwargs, **config.all_kwargs())
    grad_x = torch.empty_like(x)
    grid, bargs, kwargs, partials, _ = _backward_launch_args(grad_y, x, grad_x, weights, [config])
    _idc_backward_kernel.fn[grid](*bargs, **kwargs, **config.all_kwargs())
    grid, wargs, kwargs, grad_w, grad_b = _weight_grad_launch_args(partials, weights)
    _idc_weight_grad_kernel[grid](*wargs, **kwargs)
    return y, grad_x, grad_w, grad_b


# Fake kernels, autograd (with the double-backward rule), FLOP formulas and the autocast rule:
# the same registration as the C++ op pair's.
register_op_pair("triton_inception_dwconv3d_forward", "triton_inception_dwconv3d_backward")


def inception_dwconv3d_triton(x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias,
                              d_weight, d_bias):
    """The Triton backend: y (N, C, D, H, W) like x. CUDA tensors, or CPU ones with TRITON_INTERPRET=1."""
    return torch.ops.fusionseg.triton_inception_dwconv3d_forward(
        x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias, d_weight, d_bias)
