"""fusionseg_kernels: fused InceptionDWConv3d kernels (CPU, CUDA, Triton) and the networks built on them.

Public API:
    inception_dwconv3d(x, cube_weight, cube_bias, w_weight, w_bias, h_weight, h_bias,
                       d_weight, d_bias, *, backend="auto")
    InceptionDWConv3d(in_channels, ...)           the drop-in module
    explain_backend(x) -> (backend, reason)       what backend="auto" picks, and why
    build_info() -> dict                          what the C++ extension was built with

Importing the package imports nothing heavy: each name above loads its module (and torch) when
first used, so the command line starts without torch and a process pays only for what it uses.
"""
from __future__ import annotations

from ._imports import lazy_exports

from ._version import __version__

# public name -> the module that defines it
_LAZY = {
    "ExtensionNotBuiltError": "._extension", "build_info": "._extension", "extension_available": "._extension",
    "InceptionDWConv3d": ".modules",
    "BACKENDS": ".ops.inception_dwconv3d", "BackendUnavailableError": ".ops.inception_dwconv3d",
    "explain_backend": ".ops.inception_dwconv3d", "inception_dwconv3d": ".ops.inception_dwconv3d",
    "inception_dwconv3d_reference": ".ops.inception_dwconv3d",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
