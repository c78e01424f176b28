"""Drop-in nn.Modules built on the fused ops."""
from __future__ import annotations

import math

import torch
from torch import nn

from .ops.inception_dwconv3d import inception_dwconv3d
from .ops.inception_dwconv3d.dispatch import check_backend_name


def _require_int(name: str, value) -> int:
    # bool is an int subclass, floats like 16.0 would silently truncate elsewhere: both refused.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"InceptionDWConv3d: {name} must be an int, got {value!r}")
    return value


class DepthwiseConv3dParams(nn.Module):
    """The parameters of a depthwise ``nn.Conv3d(gc, gc, kernel, groups=gc)`` (same keys, shapes
    and initialization), without its forward: the fused op reads them. Unlike nn.Conv3d it
    allows gc = 0."""

    def __init__(self, channels: int, kernel_size: tuple[int, int, int], bias: bool = True):
        super().__init__()
        self.channels = channels
        self.kernel_size = tuple(kernel_size)
        self.weight = nn.Parameter(torch.empty(channels, 1, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.channels == 0:
            return
        # As nn.Conv3d: kaiming_uniform(a=sqrt(5)), bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(math.prod(self.kernel_size))
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}"


class InceptionDWConv3d(nn.Module):
    """Inception depthwise convolution over (N, C, D, H, W) (see docs/op.md).

    gc = floor(in_channels * branch_ratio) channels each go through a cube (k×k×k) conv and three
    band convs (strips 1×1×b, 1×b×1, b×1×1, or with ``band_shape="plane"`` 1×b×b, b×1×b, b×b×1);
    the other C − 4·gc channels pass unchanged. State-dict keys match the released module
    (``dwconv_hwd``, ``dwconv_wd``, ``dwconv_hd``, ``dwconv_hw``, each ``.weight``/``.bias``).
    ``backend`` ("auto", "reference", "cpu", "cuda", "triton") may be changed at any time.
    """

    def __init__(self, in_channels: int, cube_kernel_size: int = 3, band_kernel_size: int = 11,
                 branch_ratio: float = 0.125, band_shape: str = "strip", bias: bool = True,
                 backend: str = "auto"):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("cube_kernel_size", cube_kernel_size),
                            ("band_kernel_size", band_kernel_size)):
            _require_int(name, value)
        if isinstance(branch_ratio, bool) or not isinstance(branch_ratio, (int, float)):
            raise TypeError(f"InceptionDWConv3d: branch_ratio must be a number, got {branch_ratio!r}")
        if not isinstance(bias, bool):
            raise TypeError(f"InceptionDWConv3d: bias must be True or False, got {bias!r}")
        if in_channels < 1:
            raise ValueError(f"InceptionDWConv3d: in_channels must be positive, got {in_channels}")
        for name, k in (("cube_kernel_size", cube_kernel_size), ("band_kernel_size", band_kernel_size)):
            if k < 1 or k % 2 == 0:
                raise ValueError(f"InceptionDWConv3d: {name} must be odd and positive, got {k}")
        if not 0.0 <= branch_ratio <= 0.25:
            raise ValueError(f"InceptionDWConv3d: branch_ratio must lie in [0, 0.25] (4 groups of "
                             f"gc channels), got {branch_ratio}")
        if band_shape not in ("strip", "plane"):
            raise ValueError(f"InceptionDWConv3d: band_shape must be 'strip' or 'plane', got {band_shape!r}")
        self.in_channels = in_channels
        self.gc = int(in_channels * branch_ratio)
        self.band_shape = band_shape
        k, b = cube_kernel_size, band_kernel_size
        if band_shape == "strip":
            w_kernel, h_kernel, d_kernel = (1, 1, b), (1, b, 1), (b, 1, 1)
        else:  # the paper's text, mapped in its order (docs/op.md)
            w_kernel, h_kernel, d_kernel = (1, b, b), (b, 1, b), (b, b, 1)
        self.dwconv_hwd = DepthwiseConv3dParams(self.gc, (k, k, k), bias)
        self.dwconv_wd = DepthwiseConv3dParams(self.gc, w_kernel, bias)
        self.dwconv_hd = DepthwiseConv3dParams(self.gc, h_kernel, bias)
        self.dwconv_hw = DepthwiseConv3dParams(self.gc, d_kernel, bias)
        self.backend = backend

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_backend_name(value)

    def reset_parameters(self) -> None:
        for m in (self.dwconv_hwd, self.dwconv_wd, self.dwconv_hd, self.dwconv_hw):
            m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"InceptionDWConv3d expects a 5-D input (N, C, D, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"InceptionDWConv3d was built for {self.in_channels} channels, "
                             f"got an input with {x.shape[1]}")
        p = (self.dwconv_hwd, self.dwconv_wd, self.dwconv_hd, self.dwconv_hw)
        return inception_dwconv3d(x, p[0].weight, p[0].bias, p[1].weight, p[1].bias,
                                  p[2].weight, p[2].bias, p[3].weight, p[3].bias,
                                  backend=self._backend)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, gc={self.gc}, cube={self.dwconv_hwd.kernel_size[0]}, "
                f"band={self.band_shape} {max(self.dwconv_wd.kernel_size)}, backend={self._backend!r}")
