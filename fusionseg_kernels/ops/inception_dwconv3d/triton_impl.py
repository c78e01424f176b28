"""Triton backend of inception_dwconv3d, host side: launch arguments and the op pair (the kernels
are in `triton_kernels`).

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
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

import triton

from .registration import register_op_pair
from .triton_kernels import (_GPU_CONFIGS, _ID_BLOCKS_N, _MAX_UNROLLED_TAPS, AUTOTUNE, CONFIGS, INTERPRET,  # noqa: F401
                             _idc_backward_kernel, _idc_forward_kernel, _idc_weight_grad_kernel, _prune_configs)

FORWARD_OP = "fusionseg::triton_inception_dwconv3d_forward"
BACKWARD_OP = "fusionseg::triton_inception_dwconv3d_backward"
_INT32_LIMIT = 2**31 - 1
# Allocator of y and grad_x. Tests replace it by a NaN-filling one to catch unwritten elements.
_empty_like = torch.empty_like
#: what a static model of the kernels needs to know of their structure
MAX_UNROLLED_TAPS = int(_MAX_UNROLLED_TAPS.value)
IDENTITY_CHANNEL_BLOCKS = _ID_BLOCKS_N
GPU_CONFIGS = _GPU_CONFIGS

# Decided once at import (both inputs are fixed by then), so that available() is a constant
# when torch.compile traces the public function's backend check.
_AVAILABLE = ((True, "") if INTERPRET or torch.cuda.is_available() else
              (False, "the triton backend needs a CUDA GPU (or TRITON_INTERPRET=1 set before "
                      "importing fusionseg_kernels, to run it on CPU tensors through the interpreter)"))


def available() -> tuple[bool, str]:
    """(usable, why not): triton imports; it runs on CUDA tensors or, with TRITON_INTERPRET=1, on CPU."""
    return _AVAILABLE


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


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch of the Triton backend, as the op makes it: ``kernel[grid](*args,
    **kwargs)``. `kernel` is the autotuned kernel for the forward and backward (the tile config
    is chosen by the autotuner among `launch_configs`), the plain JIT function for the
    weight-gradient stage. The static GPU report compiles exactly these launches."""

    kernel: object
    grid: Callable[[dict], tuple] | tuple
    args: tuple
    kwargs: dict

    @property
    def jit_function(self):
        """The JIT function (inside the autotuner, if any)."""
        return self.kernel.fn if isinstance(self.kernel, triton.runtime.Autotuner) else self.kernel


def launch_configs(width: int, configs=None) -> list:
    """The tile configs the launcher tries for a volume of this width (after pruning; the
    first one only with FUSIONSEG_TRITON_AUTOTUNE=0)."""
    return _prune_configs(CONFIGS if configs is None else configs, {"W": int(width)})


def forward_launch(x, y, weights, biases) -> KernelLaunch:
    """The forward kernel's launch for y = op(x)."""
    N, C, D, H, W = x.shape
    gc = weights[0].shape[0]
    table, bias_offsets = _param_table(weights, biases, x.dtype, x.device)

    def grid(meta):
        return (_grid_size(N, C, gc, D, H, W, meta),)

    args = (x, y, table, C, D, H, W, C - 4 * gc, gc, *bias_offsets, *x.stride(), *y.stride(),
            *_kernel_sizes(weights))
    return KernelLaunch(_idc_forward_kernel, grid, args, {"INT64": _needs_int64(x, y)})


def backward_launch(grad_y, x, grad_x, weights, configs=None) -> tuple[KernelLaunch, Tensor]:
    """The backward kernel's launch and the dW/db partials buffer it fills; `configs` (default:
    the launcher's, pruned to x's width class) size the partials."""
    N, C, D, H, W = x.shape
    gc = weights[0].shape[0]
    table, _ = _param_table(weights, (None,) * 4, x.dtype, x.device)
    # int(): kernel sizes are constexprs anyway (a guard, not a symbol, under dynamic shapes)
    t_max = int(max(math.prod(w.shape[2:]) for w in weights))
    # the autotuner times only the configs of W's shape class (the same pruning)
    mine = launch_configs(W) if configs is None else configs
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
    return KernelLaunch(_idc_backward_kernel, grid, args, kwargs), partials


def weight_grad_launch(partials, weights) -> tuple[KernelLaunch, list, list]:
    """The second stage of dW/db (one program per (conv channel, slot) column of the partials),
    with the gradient tensors it writes: (launch, grad weights, grad biases)."""
    gc = weights[0].shape[0]
    grad_w = [torch.empty(w.shape, dtype=w.dtype, device=w.device) for w in weights]
    grad_b = [torch.empty((gc,), dtype=w.dtype, device=w.device) for w in weights]
    taps = [int(math.prod(w.shape[2:])) for w in weights]
    cols, part_stride, rows = partials.shape
    args = (partials, *grad_w, *grad_b, gc, rows, part_stride, *taps)
    kwargs = {"ROWS_BLOCK": 512 if rows >= 512 else max(16, triton.next_power_of_2(rows))}
    return KernelLaunch(_idc_weight_grad_kernel, (cols * part_stride,), args, kwargs), grad_w, grad_b


def _run(launch: KernelLaunch, **config) -> None:
    """Launches as the op does (visible to torch.compile); with a config, that config's JIT
    function directly (the autotuner bypassed, same specialization)."""
    if config:
        launch.jit_function[launch.grid](*launch.args, **launch.kwargs, **config)
    else:
        _launch(launch.kernel)[launch.grid](*launch.args, **launch.kwargs)

@torch.library.triton_op(FORWARD_OP, mutates_args=())
def _forward_op(x: Tensor, cube_weight: Tensor, cube_bias: Optional[Tensor], w_weight: Tensor,
                w_bias: Optional[Tensor], h_weight: Tensor, h_bias: Optional[Tensor],
                d_weight: Tensor, d_bias: Optional[Tensor]) -> Tensor:
    weights = (cube_weight, w_weight, h_weight, d_weight)
    biases = (cube_bias, w_bias, h_bias, d_bias)
    y = _empty_like(x)
    if x.numel() == 0:
        return y
    _run(forward_launch(x, y, weights, biases))
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
    launch, partials = backward_launch(grad_y, x, grad_x, weights)
    _run(launch)
    launch, grad_w, grad_b = weight_grad_launch(partials, weights)
    _run(launch)
    return (grad_x, *grad_w, *grad_b)


def run_kernels_with_config(x, args, grad_y, config):
    """Forward and backward kernels launched with one given config, bypassing the autotuner
    (same specialization and options as its launches, so Triton's on-disk cache is shared).
    Used to compile the configs in parallel processes (bench_gpu_kernels.py --precompile).
    args: the op's eight weight/bias arguments. Returns (y, grad_x, grad weights, grad biases)."""
    weights, biases = tuple(args[0::2]), tuple(args[1::2])
    y = torch.empty_like(x)
    _run(forward_launch(x, y, weights, biases), **config.all_kwargs())
    grad_x = torch.empty_like(x)
    launch, partials = backward_launch(grad_y, x, grad_x, weights, [config])
    _run(launch, **config.all_kwargs())
    launch, grad_w, grad_b = weight_grad_launch(partials, weights)
    launch.kernel[launch.grid](*launch.args, **launch.kwargs)
    return y, grad_x, grad_w, grad_b


# Fake kernels, autograd (with the double-backward rule), FLOP formulas and the autocast rule:
# the same registration as the C++ op pair's.
register_op_pair("triton_inception_dwconv3d_forward", "triton_inception_dwconv3d_backward")


def inception_dwconv3d_triton(x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias,
                              d_weight, d_bias):
    """The Triton backend: y (N, C, D, H, W) like x. CUDA tensors, or CPU ones with TRITON_INTERPRET=1."""
    return torch.ops.fusionseg.triton_inception_dwconv3d_forward(
        x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias, d_weight, d_bias)
