"""The public function: checks, picks a backend, calls it."""
from __future__ import annotations

import torch

from ..._extension import extension_available, has_cuda_kernels
from ..inception_dwconv3d.dispatch import BackendUnavailableError, _assume_constant_result_when_compiling
from .reference import instance_norm_leaky_relu_reference
from .validation import check_args

#: "auto": the fused CPU kernel for CPU tensors when the C++ extension is built; for CUDA tensors
#: the Triton kernels when Triton imports, else the CUDA kernels when the extension has them
#: (InceptionDWConv3d's order until a GPU measurement says otherwise); PyTorch's ops otherwise.
#: "reference": PyTorch's ops; "cpu": the fused CPU kernel; "cuda": the fused CUDA kernels (C++);
#: "triton": the Triton kernels (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1). A named
#: backend that cannot run here is refused.
BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")


def _triton_usable(device_type: str) -> tuple[bool, str]:
    from ... import config

    if device_type != "cuda" and not (device_type == "cpu" and config.triton_interpret()):
        return False, (f"the triton backend takes CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), the "
                       f"input is on {device_type}")
    try:
        from . import triton_impl
    except ImportError as err:  # triton missing or too old
        return False, f"triton does not import ({err})"
    return triton_impl.available()


def op_prefix(backend: str, x: torch.Tensor) -> str | None:
    """The op trio that runs `backend` on x: "" (C++), "triton_" or None (PyTorch's ops);
    raises for an unknown name or a named backend that cannot run on x here."""
    if backend not in BACKENDS:
        raise ValueError(f"instance_norm_leaky_relu: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return _prefix_for(backend, x.device.type)


def _prefix_for(backend: str, device_type: str) -> str | None:
    """`op_prefix` on plain values, the chosen trio registered: under torch.compile it runs eagerly
    and its result is a constant of the graph (no file access or registration in traced code)."""
    prefix = _choose_prefix(backend, device_type)
    if prefix is not None:
        from .registration import register

        register(prefix)
    return prefix


def _choose_prefix(backend: str, device_type: str) -> str | None:
    if backend == "reference":
        return None
    if backend == "cpu":
        if device_type != "cpu":
            raise BackendUnavailableError(f"instance_norm_leaky_relu: the cpu backend takes CPU tensors, the input is "
                                          f"on {device_type}; use backend='auto' or 'reference'.")
        if not extension_available():
            raise BackendUnavailableError("instance_norm_leaky_relu: the cpu backend needs the C++ extension, which "
                                          "is not built; use backend='reference'.")
        return ""
    if backend == "cuda":
        if device_type != "cuda":
            raise BackendUnavailableError(f"instance_norm_leaky_relu: the cuda backend takes CUDA tensors, the input "
                                          f"is on {device_type}; use backend='auto' or 'reference'.")
        if not has_cuda_kernels():
            raise BackendUnavailableError("instance_norm_leaky_relu: the cuda backend needs the C++ extension built "
                                          "with its CUDA kernels, which this build lacks; use backend='auto'.")
        return ""
    if backend == "triton":
        usable, why = _triton_usable(device_type)
        if not usable:
            raise BackendUnavailableError(f"instance_norm_leaky_relu: {why}; use backend='auto' or 'reference'.")
        return "triton_"
    if device_type == "cpu":
        return "" if extension_available() else None
    if device_type != "cuda":
        return None
    if _triton_usable(device_type)[0]:
        return "triton_"
    return "" if has_cuda_kernels() else None


_assume_constant_result_when_compiling(_prefix_for)


def _op(prefix: str, suffix: str):
    return getattr(torch.ops.fusionseg, f"{prefix}instance_norm_leaky_relu{suffix}")


def instance_norm_leaky_relu(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                             *, eps: float = 1e-5, negative_slope: float = 0.01,
                             backend: str = "auto") -> torch.Tensor:
    """``leaky_relu(instance_norm(x) * weight + bias, negative_slope)`` in two passes over memory.

    Args:
        x: (N, C, D, H, W), float32/float64/float16/bfloat16, contiguous or channels_last_3d
            (other layouts are copied); statistics over D, H, W per (n, c), biased variance, as
            ``F.instance_norm`` with input statistics.
        weight, bias: (C,) affine parameters (InstanceNorm3d(affine=True)) or None.
        eps: added to the variance. negative_slope: LeakyReLU's; 1.0 is no activation.
        backend: see `BACKENDS`.

    Returns:
        y with x's shape, dtype and layout. Gradients for x, weight and bias (exact second order
        through the reference's formulas); float16/bfloat16 are computed in float32.

    Raises ValueError or TypeError (one sentence) for bad arguments, BackendUnavailableError when
    the backend cannot run here.
    """
    check_args(x, weight, bias, eps, negative_slope)
    prefix = op_prefix(backend, x)
    if prefix is None:
        return instance_norm_leaky_relu_reference(x, weight, bias, eps, negative_slope)
    y, _, _ = _op(prefix, "_forward")(x, weight, bias, float(eps), float(negative_slope))
    return y


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record a call on these tensors (None entries ignored); then only
    the out-of-place op will do."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def instance_norm_leaky_relu_(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                              *, eps: float = 1e-5, negative_slope: float = 0.01,
                              backend: str = "auto") -> torch.Tensor:
    """`instance_norm_leaky_relu` written into x (returned), for inference: no output buffer to
    allocate and fault in. Refused (ValueError) where autograd would record the call."""
    check_args(x, weight, bias, eps, negative_slope)
    if needs_grad(x, weight, bias):
        raise ValueError("instance_norm_leaky_relu_ runs in place, without gradients; use instance_norm_leaky_relu "
                         "where autograd records the call")
    prefix = op_prefix(backend, x)
    if prefix is None:
        return x.copy_(instance_norm_leaky_relu_reference(x, weight, bias, eps, negative_slope))
    _op(prefix, "_")(x, weight, bias, float(eps), float(negative_slope))
    return x
