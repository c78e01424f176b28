"""Triton kernels of inception_dwconv3d (device side): the tile configs, the autotuner's key and
pruning, and the three kernels — forward, backward (dx and per-tile dW/db partials) and the
weight-gradient second stage. The host side (launch arguments, the op pair) is `triton_impl`;
the design is in docs/triton.md.

TRITON_INTERPRET and FUSIONSEG_TRITON_AUTOTUNE are read when this module is imported: set them
before importing fusionseg_kernels.
"""
from __future__ import annotations



import triton
import triton.language as tl

from ... import config

INTERPRET = config.triton_interpret()

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
    # two channels of a W = 16 volume in 512 elements (4 per thread): the 1024-element version
    # needed 255 registers and spilled in the float32 backward on sm_89
    triton.Config({"BLOCK_C": 2, "BLOCK_D": 2, "BLOCK_H": 8, "BLOCK_W": 16}, num_warps=4),
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
AUTOTUNE = config.triton_autotune()
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
