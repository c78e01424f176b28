"""Building blocks of the released networks: conv-norm-activation layers, the
dual-branch encoder block, stacked convolutions and the nnU-Net decoder.

Every layer is registered once (the released code registers each layer twice, as ``conv`` and
``all_modules.0``, and the decoder holds the encoder again); `models/released.py` maps this clean
tree to and from that released state-dict form.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusionseg_kernels.modules import InceptionDWConv3d
from fusionseg_kernels.ops.instance_norm_act import BACKENDS as NORM_BACKENDS
from fusionseg_kernels.ops.instance_norm_act import instance_norm_leaky_relu, instance_norm_leaky_relu_, needs_grad

Triple = tuple[int, int, int]


def as_triple(value, name: str = "value") -> Triple:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} must be an int or 3 ints (D, H, W), got {value}")
    return value  # type: ignore[return-value]


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Trilinear resize with align_corners=True, as the released code does when sizes differ."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=True)


def norm_backend_for(backend: str) -> str:
    """The norm backend that goes with a network backend: PyTorch's InstanceNorm3d and LeakyReLU
    for "reference", the C++ CUDA kernels for "cuda" (the same library as the op's), otherwise the
    fused op wherever it runs ("auto")."""
    if backend in ("reference", "cuda"):
        return backend
    return "auto"


class ConvNormAct(nn.Module):
    """op -> InstanceNorm3d -> LeakyReLU (``act`` is None when the layer has no activation).

    ``conv`` is an ``nn.Conv3d`` or an ``InceptionDWConv3d`` (the released "CNA" layer, see
    `LayerFactory.released_layer`). Input (N, in, D, H, W) -> (N, out, D', H', W').

    ``norm_backend`` ("auto", "reference", "cpu", "cuda", "triton"): with "reference" the ``norm`` and ``act``
    modules run as PyTorch's; otherwise norm and activation are one fused op
    (`instance_norm_leaky_relu`) with the same parameters, written into the conv's output where
    no gradient is recorded. The modules and the state dict are the same either way.
    """

    def __init__(self, conv: nn.Module, channels: int, norm_eps: float, norm_affine: bool,
                 negative_slope: float | None, norm_backend: str = "auto"):
        super().__init__()
        self.conv = conv
        self.norm = nn.InstanceNorm3d(channels, eps=norm_eps, affine=norm_affine)
        self.act = nn.LeakyReLU(negative_slope, inplace=True) if negative_slope is not None else None
        self.norm_backend = norm_backend
        #: in inference on the fused path, a 1-channel Conv3d runs through oneDNN
        #: (`single_channel_conv_misses_onednn`); off where a FLOP counter must see nn.Conv3d's op
        self.onednn_single_channel = True

    @property
    def norm_backend(self) -> str:
        return self._norm_backend

    @norm_backend.setter
    def norm_backend(self, name: str) -> None:
        if name not in NORM_BACKENDS:
            raise ValueError(f"unknown norm backend {name!r}; choose one of {', '.join(NORM_BACKENDS)}")
        self._norm_backend = name

    @property
    def is_inception(self) -> bool:
        return isinstance(self.conv, InceptionDWConv3d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.onednn_single_channel and self.norm_backend != "reference"
                and single_channel_conv_misses_onednn(self.conv, x)):
            x = onednn_conv3d(self.conv, x)
        else:
            x = self.conv(x)
        if self.norm_backend == "reference":
            x = self.norm(x)
            return self.act(x) if self.act is not None else x
        norm = self.norm
        args = dict(eps=norm.eps, negative_slope=self.act.negative_slope if self.act is not None else 1.0,
                    backend=self.norm_backend)
        if needs_grad(x, norm.weight, norm.bias):
            return instance_norm_leaky_relu(x, norm.weight, norm.bias, **args)
        return instance_norm_leaky_relu_(x, norm.weight, norm.bias, **args)  # x: the conv's own output


def single_channel_conv_misses_onednn(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether `conv` on x is the networks' first layer on the CPU in inference (a 1-channel Conv3d,
    float32, no gradient recorded), which PyTorch's heuristic sends to its unvectorised
    slow_conv3d instead of oneDNN (several times slower for this layer on this shape class)."""
    return (type(conv) is nn.Conv3d and conv.in_channels == 1 and conv.groups == 1 and x.device.type == "cpu"
            and x.dtype == torch.float32 and conv.weight.dtype == torch.float32 and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple) and not needs_grad(x, conv.weight, conv.bias))


def onednn_conv3d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) through oneDNN (the same sums as PyTorch's convolution, another summation order)."""
    return torch.ops.aten.mkldnn_convolution(x.contiguous(), conv.weight.contiguous(), conv.bias, list(conv.padding),
                                             list(conv.stride), list(conv.dilation), conv.groups)


class LayerFactory:
    """Builds the layers of one network with its shared settings (norm, activation, bias, backend).

    `released_layer` is the release's conv-norm-act rule: an InceptionDWConv3d **whenever in == out**, whatever the
    kernel size and stride asked for (a quirk of the release, kept for checkpoint and output
    compatibility); otherwise Conv3d(in, out, k, stride, padding (k-1)//2). `idc_branch_layer` is
    the IDC-branch rule: InceptionDWConv3d only when in == out *and* stride is 1. With
    ``use_inception=False`` (the plain nnU-Net) every layer is a dense Conv3d.
    """

    def __init__(self, *, conv_bias: bool, norm_eps: float, norm_affine: bool, negative_slope: float,
                 use_inception: bool, backend: str):
        self.conv_bias = conv_bias
        self.norm_eps = norm_eps
        self.norm_affine = norm_affine
        self.negative_slope = negative_slope
        self.use_inception = use_inception
        self.backend = backend

    def _wrap(self, conv: nn.Module, channels: int, act: bool) -> ConvNormAct:
        return ConvNormAct(conv, channels, self.norm_eps, self.norm_affine,
                           self.negative_slope if act else None, norm_backend_for(self.backend))

    def dense(self, cin: int, cout: int, kernel, stride, act: bool = True) -> ConvNormAct:
        kernel, stride = as_triple(kernel, "kernel_size"), as_triple(stride, "stride")
        padding = tuple((k - 1) // 2 for k in kernel)
        conv = nn.Conv3d(cin, cout, kernel, stride, padding, bias=self.conv_bias)
        return self._wrap(conv, cout, act)

    def inception(self, channels: int, act: bool = True) -> ConvNormAct:
        return self._wrap(InceptionDWConv3d(channels, backend=self.backend), channels, act)

    def released_layer(self, cin: int, cout: int, kernel, stride, act: bool = True) -> ConvNormAct:
        if self.use_inception and cin == cout:
            return self.inception(cin, act)
        return self.dense(cin, cout, kernel, stride, act)

    def idc_branch_layer(self, cin: int, cout: int, stride, act: bool = True) -> ConvNormAct:
        if self.use_inception and cin == cout and as_triple(stride) == (1, 1, 1):
            return self.inception(cin, act)
        return self.dense(cin, cout, 3, stride, act)


class StackedConvs(nn.Module):
    """``convs``: n ConvNormAct layers applied in order (nnU-Net's StackedConvBlocks)."""

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class ResidualBranch(nn.Module):
    """LeakyReLU(convs(x) + shortcut(x)); convs = CNA(cin, b, k, stride) -> CNA(b, b, k, 1) without
    activation, shortcut = CNA(cin, b, 1, stride) without activation (always present). When
    cin == b every layer is an InceptionDWConv3d and the stride is ignored (released quirk), so
    the branch stays at the input resolution."""

    def __init__(self, layers: LayerFactory, cin: int, cout: int, kernel, stride):
        super().__init__()
        self.convs = nn.Sequential(layers.released_layer(cin, cout, kernel, stride),
                                   layers.released_layer(cout, cout, kernel, 1, act=False))
        self.shortcut = layers.released_layer(cin, cout, 1, stride, act=False)
        self.act = nn.LeakyReLU(layers.negative_slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)  # the release runs the shortcut first
        # in place: convs' output is this branch's own (its norm's backward keeps its input, not its output)
        return self.act(self.convs(x).add_(shortcut))


class DualBranchBlock(nn.Module):
    """One encoder stage of the released network: (N, cin, D, H, W) -> (N, cout, D/s, H/s, W/s).

    IDC branch IDC-CNA(cin, b, stride) -> IDC-CNA(b, b, 1) and a `ResidualBranch` (b = cout/2),
    the residual output resized to the IDC branch's size (trilinear, align_corners=True) when
    they differ, then ``fusion_conv`` = CNA(2b, cout, 1, 1) on cat(idc, residual)."""

    def __init__(self, layers: LayerFactory, cin: int, cout: int, kernel, stride):
        super().__init__()
        if cout % 2:
            raise ValueError(f"DualBranchUNet: stage features must be even (two branches of "
                             f"features/2 channels), got {cout}")
        half = cout // 2
        self.idc_branch = StackedConvs([layers.idc_branch_layer(cin, half, stride),
                                        layers.idc_branch_layer(half, half, 1)])
        self.residual_branch = ResidualBranch(layers, cin, half, kernel, stride)
        self.fusion_conv = layers.released_layer(2 * half, cout, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idc = self.idc_branch(x)
        residual = resize_to(self.residual_branch(x), idc.shape[2:])
        return self.fusion_conv(torch.cat((idc, residual), dim=1))


def transposed_conv_is_a_matmul(conv: nn.ConvTranspose3d) -> bool:
    """kernel == stride, no padding, dilation or groups: every output voxel comes from one input voxel."""
    return (tuple(conv.kernel_size) == tuple(conv.stride) and tuple(conv.padding) == (0, 0, 0)
            and tuple(conv.output_padding) == (0, 0, 0) and tuple(conv.dilation) == (1, 1, 1) and conv.groups == 1)


def upsample_into(conv: nn.ConvTranspose3d, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out.copy_(conv(x))`` for a `transposed_conv_is_a_matmul` conv, as one matmul over the
    channels and one copy that scatters its result into `out` (a channel slice of the
    concatenation that follows, say). PyTorch's CPU ConvTranspose3d does the same matmul but
    copies its result once more, and the cat a third time.

    NCDHW x: (C_out * kd * kh * kw, C_in) @ (C_in, voxels), so x is read as it lies and the
    scatter's source rows run along W, as its destination's do (the other order, voxels x
    channels, made the scatter gather 2 values per 1 KB: the largest copy of the inference
    forward's profile). channels_last_3d x: (voxels, C_in) @ (C_in, C_out * k), the
    order in which x lies."""
    n, cin, d, h, w = x.shape
    cout, (kd, kh, kw) = conv.out_channels, conv.kernel_size
    k = kd * kh * kw
    weight = conv.weight.reshape(cin, cout * k)
    if x.is_contiguous():
        planes = x.reshape(n, cin, d * h * w)
        if conv.bias is None:  # bmm, not matmul: matmul would fold to (voxels, C_in) @ ... and transpose a copy
            cols = torch.bmm(weight.t().expand(n, -1, -1), planes)
        else:  # the bias in the matmul's accumulator (an in-place add on `out` would trip autograd's view rules)
            bias = conv.bias.repeat_interleave(k).view(1, -1, 1)
            cols = torch.baddbmm(bias, weight.t().expand(n, -1, -1), planes)
        y = cols.view(n, cout, kd, kh, kw, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    else:  # channels_last_3d: (N, DHW, C) is a view
        rows = x.permute(0, 2, 3, 4, 1).reshape(n, d * h * w, cin)
        if conv.bias is None:
            cols = torch.matmul(rows, weight)
        else:
            bias = conv.bias.repeat_interleave(k).view(1, 1, -1)
            cols = torch.baddbmm(bias, rows, weight.expand(n, -1, -1))
        y = cols.view(n, d, h, w, cout, kd, kh, kw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    out.view(n, cout, d, kd, h, kh, w, kw).copy_(y)  # splitting dims is a view in any layout
    return out


class UNetDecoder(nn.Module):
    """nnU-Net's decoder, with the release's segmentation heads.

    For each of the n-1 upper stages, bottom-up: ConvTranspose3d(below -> skip channels, kernel =
    stride = that stage's stride), trilinear resize (align_corners=True) to the skip's size if they
    differ, cat(upsampled, skip), ``n_conv`` CNA layers (2c -> c, then c -> c). Every decoder stage
    has a segmentation head (1x1x1 Conv3d with bias), as in the release. With ``deep_supervision``
    False (the release) only the last head runs: (N, F0, D, H, W) -> logits (N, num_classes, D, H, W).
    With it True every head runs and forward returns their logits as nnU-Net's decoder does:
    a list, the highest resolution first. nnU-Net's trainer switches the flag by setting
    ``decoder.deep_supervision``.

    ``fused_upsampling`` (set with the network's norm backend): in inference, each stage's
    transposed conv, when `transposed_conv_is_a_matmul`, writes its output straight into the
    concatenation (`upsample_into`) instead of PyTorch's ConvTranspose3d then torch.cat — two fewer
    copies of the stage's largest tensor, the same sums. Where autograd records, PyTorch's path
    runs: the fused form's backward (the gradient of a permuted slice) copies more than it saves.
    """

    def __init__(self, layers: LayerFactory, features: Sequence[int], strides: Sequence[Triple],
                 kernel_sizes: Sequence[Triple], num_classes: int, n_conv: Sequence[int],
                 transposed_bias: bool, deep_supervision: bool = False):
        super().__init__()
        n = len(features)
        stages, transpconvs, seg_layers = [], [], []
        for i in range(n - 1):
            below, skip = features[n - 1 - i], features[n - 2 - i]
            stride, kernel = strides[n - 1 - i], kernel_sizes[n - 2 - i]
            transpconvs.append(nn.ConvTranspose3d(below, skip, stride, stride, bias=transposed_bias))
            convs = [layers.released_layer(2 * skip, skip, kernel, 1)]
            convs += [layers.released_layer(skip, skip, kernel, 1) for _ in range(n_conv[i] - 1)]
            stages.append(StackedConvs(convs))
            seg_layers.append(nn.Conv3d(skip, num_classes, 1, 1, 0, bias=True))
        # Registration order = the released state-dict order: stages, transpconvs, seg_layers.
        self.stages = nn.ModuleList(stages)
        self.transpconvs = nn.ModuleList(transpconvs)
        self.seg_layers = nn.ModuleList(seg_layers)
        self.deep_supervision = bool(deep_supervision)
        self.fused_upsampling = norm_backend_for(layers.backend) != "reference"

    def _upsample_and_cat(self, up: nn.ConvTranspose3d, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        size = tuple(s * k for s, k in zip(x.shape[2:], up.stride))
        if not (self.fused_upsampling and transposed_conv_is_a_matmul(up) and size == tuple(skip.shape[2:])
                and not torch.is_autocast_enabled(x.device.type)   # autocast: PyTorch's dtype rules
                and not needs_grad(x, up.weight, skip)):   # training: its backward copies more than it saves
            return torch.cat((resize_to(up(x), skip.shape[2:]), skip), dim=1)
        layout = torch.channels_last_3d if skip.is_contiguous(memory_format=torch.channels_last_3d) and \
            not skip.is_contiguous() else torch.contiguous_format
        dtype = torch.promote_types(torch.promote_types(x.dtype, up.weight.dtype), skip.dtype)  # as torch.cat's
        both = torch.empty((skip.shape[0], up.out_channels + skip.shape[1], *skip.shape[2:]), dtype=dtype,
                           device=skip.device, memory_format=layout)
        upsample_into(up, x, both[:, :up.out_channels])
        both[:, up.out_channels:].copy_(skip)
        return both

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        outputs = []
        for i, (up, stage) in enumerate(zip(self.transpconvs, self.stages)):
            x = stage(self._upsample_and_cat(up, x, skips[-(i + 2)]))
            if self.deep_supervision:
                outputs.append(self.seg_layers[i](x))
        if not self.deep_supervision:
            return self.seg_layers[-1](x)
        return outputs[::-1]

    def unused_heads(self) -> list[nn.Module]:
        """The segmentation heads whose output forward does not return (all but the last one
        without deep supervision)."""
        return [] if self.deep_supervision else list(self.seg_layers[:-1])
