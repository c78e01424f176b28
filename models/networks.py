"""The released dual-branch U-Net, its single-branch ablation and the plain nnU-Net baseline (SPEC §3)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from fusionseg_kernels.modules import InceptionDWConv3d
from fusionseg_kernels.ops.inception_dwconv3d import BACKENDS

from .blocks import (DualBranchBlock, LayerFactory, StackedConvs, Triple, UNetDecoder, as_triple)

RELEASED_FEATURES = (32, 64, 128, 256, 320)
RELEASED_STRIDES = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
PLAIN_FEATURES = (32, 64, 128, 256, 320, 320)
PLAIN_STRIDES = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))


class InputSizeError(ValueError):
    """The input's spatial size is not divisible by the network's total stride."""


class _UNet(nn.Module):
    """Shared machinery: argument handling, backend switching, input checks, released state dicts."""

    #: whether layers with in == out become InceptionDWConv3d (False for the plain nnU-Net)
    _uses_inception = True
    #: how many convolutions per encoder stage this architecture can build (None: any)
    _fixed_encoder_convs: int | None = None

    def __init__(self, input_channels: int, num_classes: int, features_per_stage: Sequence[int],
                 strides: Sequence, kernel_sizes, n_conv_per_stage, n_conv_per_stage_decoder,
                 conv_bias: bool, norm_eps: float, norm_affine: bool, negative_slope: float,
                 backend: str):
        super().__init__()
        features = [int(f) for f in features_per_stage]
        n = len(features)
        if n < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 stages, got {n}")
        if input_channels < 1 or num_classes < 1 or min(features) < 1:
            raise ValueError(f"{type(self).__name__}: channel counts must be positive")
        strides = [as_triple(s, "stride") for s in strides]
        if len(strides) != n:
            raise ValueError(f"strides needs one entry per stage ({n}), got {len(strides)}")
        if isinstance(kernel_sizes, int):
            kernel_sizes = [kernel_sizes] * n
        kernel_sizes = [as_triple(k, "kernel_size") for k in kernel_sizes]
        if len(kernel_sizes) != n:
            raise ValueError(f"kernel_sizes needs one entry per stage ({n}), got {len(kernel_sizes)}")
        if any(k % 2 == 0 for ks in kernel_sizes for k in ks):
            raise ValueError(f"kernel sizes must be odd, got {kernel_sizes}")
        enc_convs = [n_conv_per_stage] * n if isinstance(n_conv_per_stage, int) else list(n_conv_per_stage)
        dec_convs = ([n_conv_per_stage_decoder] * (n - 1) if isinstance(n_conv_per_stage_decoder, int)
                     else list(n_conv_per_stage_decoder))
        if len(enc_convs) != n or len(dec_convs) != n - 1:
            raise ValueError(f"n_conv_per_stage needs {n} entries and n_conv_per_stage_decoder {n - 1}")
        if min(enc_convs) < 1 or min(dec_convs) < 1:
            raise ValueError("every stage needs at least one convolution")
        if self._fixed_encoder_convs is not None and any(c != self._fixed_encoder_convs for c in enc_convs):
            raise ValueError(f"{type(self).__name__} has exactly {self._fixed_encoder_convs} convolutions "
                             f"per encoder stage (fixed by its block), got n_conv_per_stage={enc_convs}")
        self.input_channels = int(input_channels)
        self.num_classes = int(num_classes)
        self.features_per_stage = tuple(features)
        self.strides = tuple(strides)
        self.kernel_sizes = tuple(kernel_sizes)
        self.total_stride = tuple(math.prod(s[a] for s in strides) for a in range(3))
        self.config = dict(input_channels=self.input_channels, num_classes=self.num_classes,
                           features_per_stage=self.features_per_stage, strides=self.strides,
                           kernel_sizes=self.kernel_sizes, n_conv_per_stage=tuple(enc_convs),
                           n_conv_per_stage_decoder=tuple(dec_convs), conv_bias=bool(conv_bias),
                           norm_eps=float(norm_eps), norm_affine=bool(norm_affine),
                           negative_slope=float(negative_slope))
        self._layers = LayerFactory(conv_bias=conv_bias, norm_eps=norm_eps, norm_affine=norm_affine,
                                    negative_slope=negative_slope, use_inception=self._uses_inception,
                                    backend=backend)
        self.encoder = self._build_encoder(enc_convs)
        self.decoder = UNetDecoder(self._layers, features, strides, kernel_sizes, num_classes,
                                   dec_convs, transposed_bias=conv_bias)
        del self._layers
        self.set_backend(backend)  # validates the name even when the net has no IDC layer

    def _build_encoder(self, n_convs: list[int]) -> nn.Module:
        # nnU-Net's plain encoder (single-branch and plain networks); DualBranchUNet overrides it.
        return _PlainEncoder(self._layers, self.input_channels, list(self.features_per_stage),
                             list(self.strides), list(self.kernel_sizes), n_convs)

    # ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, input_channels, D, H, W) with D, H, W divisible by `total_stride` ->
        logits (N, num_classes, D, H, W)."""
        self.check_input(x)
        return self.decoder(self.encoder(x))

    def check_input(self, x: torch.Tensor) -> None:
        """Raises for a wrong rank, channel count, or a spatial size not divisible by the total stride.

        (The released code instead runs such inputs and silently interpolates the decoder's
        upsampled maps to the skip sizes; nnU-Net's sliding window always feeds divisible patches.)
        """
        if x.dim() != 5:
            raise ValueError(f"{type(self).__name__} expects a 5-D input (N, C, D, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.input_channels:
            raise ValueError(f"{type(self).__name__} was built for {self.input_channels} input channel(s), "
                             f"got {x.shape[1]}")
        size = tuple(x.shape[2:])
        if any(s % t for s, t in zip(size, self.total_stride)):
            valid = tuple(-(-s // t) * t for s, t in zip(size, self.total_stride))
            raise InputSizeError(
                f"{type(self).__name__}: input spatial size (D, H, W) = {size} is not divisible by the "
                f"network's total stride {self.total_stride}; pad it to e.g. {valid} (nnU-Net's "
                f"patch sizes always are). The released code would run it and silently interpolate.")

    # ----------------------------------------------------------------------------------------
    def inception_layers(self) -> list[InceptionDWConv3d]:
        return [m for m in self.modules() if isinstance(m, InceptionDWConv3d)]

    def set_backend(self, backend: str) -> "_UNet":
        """Sets the backend of every InceptionDWConv3d ("auto", "reference", "cpu", "cuda", "triton")."""
        if backend not in BACKENDS:  # checked here too for nets without InceptionDWConv3d layers
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        for m in self.inception_layers():
            m.backend = backend
        return self

    @property
    def backend(self) -> str | None:
        """The backend shared by all InceptionDWConv3d layers ("mixed" if they differ, None if none)."""
        names = {m.backend for m in self.inception_layers()}
        if not names:
            return None
        return names.pop() if len(names) == 1 else "mixed"

    # ----------------------------------------------------------------------------------------
    def released_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict in the released (nnU-Net) form: every layer under its ``conv`` and
        ``all_modules.N`` names and the encoder again under ``decoder.encoder.`` — loadable by
        the original code. Aliased entries share storage, like the release's."""
        from .released import released_state_dict

        return released_state_dict(self)

    def load_released_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> "_UNet":
        """Loads a released-form (or this clean-form) state dict; see `released.load_released_state_dict`."""
        from .released import load_released_state_dict

        load_released_state_dict(self, state_dict)
        return self

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_plans(cls, arch_kwargs: Mapping[str, Any], input_channels: int, num_classes: int,
                   backend: str = "auto") -> "_UNet":
        """Builds the network from an nnU-Net v2 plans ``architecture`` entry (or its ``arch_kwargs``).

        ``input_channels`` and ``num_classes`` come from the dataset (nnU-Net takes them from
        dataset.json, not from the plans). Only the settings these networks have are accepted:
        Conv3d, InstanceNorm3d, LeakyReLU, no dropout; anything else raises.
        """
        return cls(input_channels=input_channels, num_classes=num_classes, backend=backend,
                   **kwargs_from_plans(arch_kwargs))

    def extra_repr(self) -> str:
        return (f"input_channels={self.input_channels}, num_classes={self.num_classes}, "
                f"features_per_stage={self.features_per_stage}, strides={self.strides}")


_CLASS_NAMES = {
    "conv_op": ("Conv3d",),
    "norm_op": ("InstanceNorm3d",),
    "nonlin": ("LeakyReLU",),
}


def _class_name(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.rsplit(".", 1)[-1]
    return getattr(value, "__name__", str(value))


def kwargs_from_plans(arch: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor keyword arguments from an nnU-Net plans ``architecture``/``arch_kwargs`` dict."""
    if "arch_kwargs" in arch:
        arch = arch["arch_kwargs"]
    arch = dict(arch)
    known = {"n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage",
             "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op",
             "dropout_op_kwargs", "nonlin", "nonlin_kwargs", "deep_supervision", "_kw_requires_import"}
    unknown = sorted(set(arch) - known)
    if unknown:
        raise ValueError(f"unsupported nnU-Net arch_kwargs: {unknown}")
    for key, allowed in _CLASS_NAMES.items():
        name = _class_name(arch.get(key, allowed[0]))
        if name not in allowed:
            raise ValueError(f"arch_kwargs[{key!r}] = {arch[key]!r}: these networks only use {allowed[0]}")
    if _class_name(arch.get("dropout_op")) is not None:
        raise ValueError(f"dropout is not supported (arch_kwargs['dropout_op'] = {arch['dropout_op']!r})")
    if arch.get("deep_supervision"):
        raise ValueError("deep supervision is not supported (the release trains without it)")
    features = list(arch["features_per_stage"])
    if "n_stages" in arch and int(arch["n_stages"]) != len(features):
        raise ValueError(f"n_stages = {arch['n_stages']} but {len(features)} features_per_stage")
    out: dict[str, Any] = {"features_per_stage": features, "strides": arch["strides"]}
    for key in ("kernel_sizes", "n_conv_per_stage", "n_conv_per_stage_decoder", "conv_bias"):
        if key in arch:
            out[key] = arch[key]
    norm_kwargs = dict(arch.get("norm_op_kwargs") or {})
    if "eps" in norm_kwargs:
        out["norm_eps"] = float(norm_kwargs.pop("eps"))
    if "affine" in norm_kwargs:
        out["norm_affine"] = bool(norm_kwargs.pop("affine"))
    if norm_kwargs.get("track_running_stats") is False:
        del norm_kwargs["track_running_stats"]
    if norm_kwargs:
        raise ValueError(f"unsupported norm_op_kwargs: {norm_kwargs}")
    nonlin_kwargs = dict(arch.get("nonlin_kwargs") or {})
    nonlin_kwargs.pop("inplace", None)
    if "negative_slope" in nonlin_kwargs:
        out["negative_slope"] = float(nonlin_kwargs.pop("negative_slope"))
    if nonlin_kwargs:
        raise ValueError(f"unsupported nonlin_kwargs: {nonlin_kwargs}")
    return out


class _DualBranchEncoder(nn.Module):
    """``input_conv`` = CNA(in, F0/2, 3, 1), then one `DualBranchBlock` per stage; returns every
    stage's output (the decoder's skips)."""

    #: the release wraps each stage block in an nn.Sequential: ``encoder.stages.<s>.0.…``
    released_stage_wrapper = True

    def __init__(self, layers: LayerFactory, input_channels: int, features: list[int],
                 strides: list[Triple], kernel_sizes: list[Triple]):
        super().__init__()
        if features[0] % 2:
            raise ValueError(f"DualBranchUNet: features_per_stage[0] must be even, got {features[0]}")
        stem = features[0] // 2
        self.input_conv = layers.cna(input_channels, stem, 3, 1)
        cins = [stem] + features[:-1]
        self.stages = nn.ModuleList(DualBranchBlock(layers, cin, cout, k, s)
                                    for cin, cout, k, s in zip(cins, features, kernel_sizes, strides))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.input_conv(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class _PlainEncoder(nn.Module):
    """One `StackedConvs` per stage: CNA(cin, F[s], k, stride_s) then n-1 CNA(F[s], F[s], k, 1)."""

    released_stage_wrapper = True

    def __init__(self, layers: LayerFactory, input_channels: int, features: list[int],
                 strides: list[Triple], kernel_sizes: list[Triple], n_convs: list[int]):
        super().__init__()
        cins = [input_channels] + features[:-1]
        self.stages = nn.ModuleList(
            StackedConvs([layers.cna(cin, cout, k, s)] + [layers.cna(cout, cout, k, 1) for _ in range(n - 1)])
            for cin, cout, k, s, n in zip(cins, features, kernel_sizes, strides, n_convs))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class DualBranchUNet(_UNet):
    """The released network (SPEC §3): a 3D U-Net whose encoder stages each fuse an IDC branch and a
    residual branch. Defaults are the release's: 8,227,320 parameters, input sizes divisible by
    (8, 16, 16). ``backend`` is the InceptionDWConv3d backend of all 28 such layers.

    Input (N, input_channels, D, H, W) -> logits (N, num_classes, D, H, W).
    """

    _fixed_encoder_convs = 2

    def __init__(self, input_channels: int = 1, num_classes: int = 2,
                 features_per_stage: Sequence[int] = RELEASED_FEATURES,
                 strides: Sequence = RELEASED_STRIDES, kernel_sizes=3, n_conv_per_stage=2,
                 n_conv_per_stage_decoder=2, conv_bias: bool = False, norm_eps: float = 1e-5,
                 norm_affine: bool = False, negative_slope: float = 0.01, backend: str = "auto"):
        super().__init__(input_channels, num_classes, features_per_stage, strides, kernel_sizes,
                         n_conv_per_stage, n_conv_per_stage_decoder, conv_bias, norm_eps, norm_affine,
                         negative_slope, backend)

    def _build_encoder(self, n_convs):
        return _DualBranchEncoder(self._layers, self.input_channels, list(self.features_per_stage),
                                  list(self.strides), list(self.kernel_sizes))


class SingleBranchUNet(_UNet):
    """The paper's single-branch ablation: nnU-Net's plain encoder built with the released CNA rule
    (InceptionDWConv3d whenever in == out) and the same decoder. 8,757,032 parameters by default."""

    def __init__(self, input_channels: int = 1, num_classes: int = 2,
                 features_per_stage: Sequence[int] = RELEASED_FEATURES,
                 strides: Sequence = RELEASED_STRIDES, kernel_sizes=3, n_conv_per_stage=2,
                 n_conv_per_stage_decoder=2, conv_bias: bool = False, norm_eps: float = 1e-5,
                 norm_affine: bool = False, negative_slope: float = 0.01, backend: str = "auto"):
        super().__init__(input_channels, num_classes, features_per_stage, strides, kernel_sizes,
                         n_conv_per_stage, n_conv_per_stage_decoder, conv_bias, norm_eps, norm_affine,
                         negative_slope, backend)


class PlainConvUNet(_UNet):
    """nnU-Net's default 3D U-Net as planned for this dataset (the ablation's baseline): 6 stages,
    32…320 features, dense 3×3×3 convolutions with bias (also on the transposed convs), affine
    InstanceNorm, LeakyReLU(0.01). 30,785,994 parameters by default. No InceptionDWConv3d, so
    ``backend`` has nothing to set (it is still validated)."""

    _uses_inception = False

    def __init__(self, input_channels: int = 1, num_classes: int = 2,
                 features_per_stage: Sequence[int] = PLAIN_FEATURES,
                 strides: Sequence = PLAIN_STRIDES, kernel_sizes=3, n_conv_per_stage=2,
                 n_conv_per_stage_decoder=2, conv_bias: bool = True, norm_eps: float = 1e-5,
                 norm_affine: bool = True, negative_slope: float = 0.01, backend: str = "auto"):
        super().__init__(input_channels, num_classes, features_per_stage, strides, kernel_sizes,
                         n_conv_per_stage, n_conv_per_stage_decoder, conv_bias, norm_eps, norm_affine,
                         negative_slope, backend)


NETWORKS = {"dual": DualBranchUNet, "single": SingleBranchUNet, "plain": PlainConvUNet}
