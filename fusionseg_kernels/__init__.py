"""fusionseg_kernels: fused InceptionDWConv3d kernels (CPU, CUDA, Triton) and the networks built on them.

Public API:
    inception_dwconv3d(x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias,
                       d_weight, d_bias, *, backend="auto")
    InceptionDWConv3d(in_channels, ...)           the drop-in module
    explain_backend(x) -> (backend, reason)       what backend="auto" picks, and why
    build_info() -> dict                          what the C++ extension was built with
"""
from ._version import __version__
from ._extension import ExtensionNotBuiltError, build_info, extension_available
from .modules import InceptionDWConv3d
from .ops.inception_dwconv3d import (BACKENDS, BackendUnavailableError, explain_backend,
                                     inception_dwconv3d, inception_dwconv3d_reference)


__all__ = ["__version__", "BACKENDS", "BackendUnavailableError", "ExtensionNotBuiltError", "InceptionDWConv3d",
           "build_info", "explain_backend", "extension_available", "inception_dwconv3d",
           "inception_dwconv3d_reference"]
