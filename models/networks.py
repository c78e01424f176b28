"""The released dual-branch U-Net, its single-branch ablation and the plain nnU-Net baseline.

All three share one constructor (`_UNet.__init__`); each class only states its defaults
(`_UNet.defaults`). The constructor also takes nnU-Net v2's architecture keywords
(``n_stages``, ``conv_op``, ``norm_op``, ``norm_op_kwargs``, ``dropout_op``, ``dropout_op_kwargs``,
``nonlin``, ``nonlin_kwargs``, ``deep_supervision``), so nnU-Net's ``get_network_from_plans`` can
build these networks from a plans file whose ``network_class_name`` is e.g.
``fusionseg_kernels.models.DualBranchUNet``.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from fusionseg_kernels.errors import ArchitectureError, InputSizeError
from fusionseg_kernels.modules import InceptionDWConv3d
from fusionseg_kernels.ops.inception_dwconv3d.dispatch import check_backend_name

from .blocks import (ConvNormAct, DualBranchBlock, LayerFactory, StackedConvs, Triple, UNetDecoder, as_triple,
                     norm_backend_for)

RELEASED_FEATURES = (32, 64, 128, 256, 320)
RELEASED_STRIDES = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
PLAIN_FEATURES = (32, 64, 128, 256, 320, 320)
PLAIN_STRIDES = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))


# nnU-Net's architecture keywords (plans ``arch_kwargs``) besides the ones the constructor shares.
NNUNET_KEYWORDS = ("n_stages", "conv_op", "norm_op", "norm_op_kwargs", "dropout_op", "dropout_op_kwargs",
                   "nonlin", "nonlin_kwargs")

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


def _translate_nnunet_keywords(n_features: int, given: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor settings (norm_eps, norm_affine, negative_slope) from nnU-Net's keywords; raises
    `ArchitectureError` for anything these networks do not have (another conv/norm/nonlinearity,
    dropout, norm or nonlinearity options they ignore, an n_stages that disagrees)."""
    for key, allowed in _CLASS_NAMES.items():
        if given.get(key) is not None and _class_name(given[key]) not in allowed:
            raise ArchitectureError(f"arch_kwargs[{key!r}] = {given[key]!r}: these networks only use {allowed[0]}")
    if _class_name(given.get("dropout_op")) is not None:
        raise ArchitectureError(f"dropout is not supported (arch_kwargs['dropout_op'] = {given['dropout_op']!r})")
    if given.get("n_stages") is not None and int(given["n_stages"]) != n_features:
        raise ArchitectureError(f"n_stages = {given['n_stages']} but {n_features} features_per_stage")
    out: dict[str, Any] = {}
    norm_kwargs = dict(given.get("norm_op_kwargs") or {})
    if "eps" in norm_kwargs:
        out["norm_eps"] = float(norm_kwargs.pop("eps"))
    if "affine" in norm_kwargs:
        out["norm_affine"] = bool(norm_kwargs.pop("affine"))
    if norm_kwargs.get("track_running_stats") is False:
        del norm_kwargs["track_running_stats"]
    if norm_kwargs:
        raise ArchitectureError(f"unsupported norm_op_kwargs: {norm_kwargs}")
    nonlin_kwargs = dict(given.get("nonlin_kwargs") or {})
    nonlin_kwargs.pop("inplace", None)
    if "negative_slope" in nonlin_kwargs:
        out["negative_slope"] = float(nonlin_kwargs.pop("negative_slope"))
    if nonlin_kwargs:
        raise ArchitectureError(f"unsupported nonlin_kwargs: {nonlin_kwargs}")
    return out


class _UNet(nn.Module):
    """Shared machinery: the one constructor, backend switching, input checks, deep supervision,
    released state dicts.

    A subclass states its architecture through class attributes only: `defaults` (the constructor
    defaults that differ from the base's), `_uses_inception` and `_fixed_encoder_convs`; an
    encoder other than nnU-Net's plain one overrides `_build_encoder`.
    """

    #: Constructor defaults; a subclass lists only what it changes (merged in __init_subclass__).
    defaults: ClassVar[dict[str, Any]] = dict(
        input_channels=1, num_classes=2, features_per_stage=RELEASED_FEATURES, strides=RELEASED_STRIDES,
        kernel_sizes=3, n_conv_per_stage=2, n_conv_per_stage_decoder=2, conv_bias=False, norm_eps=1e-5,
        norm_affine=False, negative_slope=0.01, backend="auto")
    #: whether layers with in == out become InceptionDWConv3d (False for the plain nnU-Net)
    _uses_inception: ClassVar[bool] = True
    #: how many convolutions per encoder stage this architecture can build (None: any)
    _fixed_encoder_convs: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.defaults = {**_UNet.defaults, **cls.__dict__.get("defaults", {})}
        # help(cls) and inspect.signature(cls) show the class's own defaults, not the None
        # placeholders of the shared constructor.
        sig = inspect.signature(_UNet.__init__)
        params = [p.replace(default=cls.defaults[p.name]) if p.name in cls.defaults else p
                  for p in sig.parameters.values() if p.name != "self"]
        cls.__signature__ = sig.replace(parameters=params)

    def __init__(self, input_channels: int | None = None, num_classes: int | None = None,
                 features_per_stage: Sequence[int] | None = None, strides: Sequence | None = None,
                 kernel_sizes=None, n_conv_per_stage=None, n_conv_per_stage_decoder=None,
                 conv_bias: bool | None = None, norm_eps: float | None = None, norm_affine: bool | None = None,
                 negative_slope: float | None = None, backend: str | None = None, *,
                 deep_supervision: bool = False, n_stages: int | None = None, conv_op=None, norm_op=None,
                 norm_op_kwargs: Mapping | None = None, dropout_op=None, dropout_op_kwargs: Mapping | None = None,
                 nonlin=None, nonlin_kwargs: Mapping | None = None):
        """Arguments left at None take the class's `defaults`. The keyword-only arguments after
        ``deep_supervision`` are nnU-Net's spellings: ``norm_op_kwargs`` ``eps``/``affine`` and
        ``nonlin_kwargs`` ``negative_slope`` set ``norm_eps``/``norm_affine``/``negative_slope``
        (given both ways they must agree); the op classes (or their dotted names) must be
        Conv3d, InstanceNorm3d and LeakyReLU, and ``dropout_op`` None."""
        super().__init__()
        name = type(self).__name__
        explicit = dict(input_channels=input_channels, num_classes=num_classes,
                        features_per_stage=features_per_stage, strides=strides, kernel_sizes=kernel_sizes,
                        n_conv_per_stage=n_conv_per_stage, n_conv_per_stage_decoder=n_conv_per_stage_decoder,
                        conv_bias=conv_bias, norm_eps=norm_eps, norm_affine=norm_affine,
                        negative_slope=negative_slope, backend=backend)
        args = {k: (self.defaults[k] if v is None else v) for k, v in explicit.items()}
        features = [int(f) for f in args["features_per_stage"]]
        translated = _translate_nnunet_keywords(len(features), dict(
            n_stages=n_stages, conv_op=conv_op, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs,
            dropout_op=dropout_op, dropout_op_kwargs=dropout_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs))
        for key, value in translated.items():
            if explicit[key] is not None and explicit[key] != value:
                raise ArchitectureError(f"{name}: {key}={explicit[key]!r} disagrees with the nnU-Net keyword "
                                        f"that sets it to {value!r}")
            args[key] = value
        n = len(features)
        if n < 2:
            raise ArchitectureError(f"{name} needs at least 2 stages, got {n}")
        if int(args["input_channels"]) < 1 or int(args["num_classes"]) < 1 or min(features) < 1:
            raise ArchitectureError(f"{name}: channel counts must be positive")
        strides = [as_triple(s, "stride") for s in args["strides"]]
        if len(strides) != n:
            raise ArchitectureError(f"strides needs one entry per stage ({n}), got {len(strides)}")
        kernel_sizes = args["kernel_sizes"]
        if isinstance(kernel_sizes, int):
            kernel_sizes = [kernel_sizes] * n
        kernel_sizes = [as_triple(k, "kernel_size") for k in kernel_sizes]
        if len(kernel_sizes) != n:
            raise ArchitectureError(f"kernel_sizes needs one entry per stage ({n}), got {len(kernel_sizes)}")
        if any(k % 2 == 0 for ks in kernel_sizes for k in ks):
            raise ArchitectureError(f"kernel sizes must be odd, got {kernel_sizes}")
        enc, dec = args["n_conv_per_stage"], args["n_conv_per_stage_decoder"]
        enc_convs = [int(enc)] * n if isinstance(enc, int) else [int(c) for c in enc]
        dec_convs = [int(dec)] * (n - 1) if isinstance(dec, int) else [int(c) for c in dec]
        if len(enc_convs) != n or len(dec_convs) != n - 1:
            raise ArchitectureError(f"n_conv_per_stage needs {n} entries and n_conv_per_stage_decoder {n - 1}")
        if min(enc_convs) < 1 or min(dec_convs) < 1:
            raise ArchitectureError("every stage needs at least one convolution")
        if self._fixed_encoder_convs is not None and any(c != self._fixed_encoder_convs for c in enc_convs):
            raise ArchitectureError(f"{name} has exactly {self._fixed_encoder_convs} convolutions "
                                    f"per encoder stage (fixed by its block), got n_conv_per_stage={enc_convs}")
        backend = check_backend_name(args["backend"])  # also for nets without InceptionDWConv3d layers
        self.input_channels = int(args["input_channels"])
        self.num_classes = int(args["num_classes"])
        self.features_per_stage = tuple(features)
        self.strides = tuple(strides)
        self.kernel_sizes = tuple(kernel_sizes)
        self.total_stride = tuple(math.prod(s[a] for s in strides) for a in range(3))
        self.config = dict(input_channels=self.input_channels, num_classes=self.num_classes,
                           features_per_stage=self.features_per_stage, strides=self.strides,
                           kernel_sizes=self.kernel_sizes, n_conv_per_stage=tuple(enc_convs),
                           n_conv_per_stage_decoder=tuple(dec_convs), conv_bias=bool(args["conv_bias"]),
                           norm_eps=float(args["norm_eps"]), norm_affine=bool(args["norm_affine"]),
                           negative_slope=float(args["negative_slope"]))
        self._layers = LayerFactory(conv_bias=bool(args["conv_bias"]), norm_eps=float(args["norm_eps"]),
                                    norm_affine=bool(args["norm_affine"]),
                                    negative_slope=float(args["negative_slope"]),
                                    use_inception=self._uses_inception, backend=backend)
        self.encoder = self._build_encoder(enc_convs)
        self.decoder = UNetDecoder(self._layers, features, strides, kernel_sizes, self.num_classes,
                                   dec_convs, transposed_bias=bool(args["conv_bias"]),
                                   deep_supervision=deep_supervision)
        del self._layers
        # Downsampling the encoder really applies per stage: the released layer rule ignores a
        # stride where a stage keeps its channel count (see blocks.LayerFactory.released_layer).
        self.applied_strides = tuple(self.encoder.applied_strides())
        self.bottleneck_stride = tuple(math.prod(s[a] for s in self.applied_strides) for a in range(3))

    def _build_encoder(self, n_convs: list[int]) -> nn.Module:
        # nnU-Net's plain encoder (single-branch and plain networks); DualBranchUNet overrides it.
        return _PlainEncoder(self._layers, self.input_channels, list(self.features_per_stage),
                             list(self.strides), list(self.kernel_sizes), n_convs)

    # ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """x: (N, input_channels, D, H, W), sizes as `check_input` requires -> logits
        (N, num_classes, D, H, W); with `deep_supervision` on, a list of the logits of every
        decoder stage, the full resolution first (as nnU-Net's decoder returns them)."""
        self.check_input(x)
        return self.decoder(self.encoder(x))

    @property
    def deep_supervision(self) -> bool:
        """Whether forward returns every decoder stage's logits (nnU-Net's trainer sets
        ``network.decoder.deep_supervision``; this property reads and writes the same flag)."""
        return self.decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        self.decoder.deep_supervision = bool(enabled)

    # ----------------------------------------------------------------------------------------
    def bottleneck_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """The bottleneck's spatial size for an input of spatial `size` (divisible by `total_stride`)."""
        return tuple(int(s) // b for s, b in zip(size, self.bottleneck_stride))

    @property
    def min_input_sizes(self) -> list[tuple[int, int, int]]:
        """The smallest spatial sizes (D, H, W) this network runs, in training and in eval:
        multiples of `total_stride` whose bottleneck has more than one voxel (InstanceNorm
        normalizes over the voxels of each channel, so it needs at least two)."""
        base = self.total_stride
        if math.prod(self.bottleneck_size(base)) > 1:
            return [base]
        return [tuple(2 * t if a == axis else t for a, t in enumerate(base)) for axis in range(3)]

    def suggest_input_size(self, size: Sequence[int]) -> tuple[int, int, int]:
        """The smallest size at least `size` on every axis (rounded up to the total stride) that the
        network accepts; where the rounded size's bottleneck has one voxel, the axis on which the
        input reaches furthest into its last stride step (the last on ties) gets one more step."""
        size = tuple(int(s) for s in size)
        rounded = [max(1, -(-s // t)) * t for s, t in zip(size, self.total_stride)]
        if math.prod(self.bottleneck_size(rounded)) <= 1:
            ratios = [s / t for s, t in zip(size, self.total_stride)]
            axis = max(range(3), key=lambda a: (ratios[a], a))
            rounded[axis] += self.total_stride[axis]
        return tuple(rounded)  # type: ignore[return-value]

    def check_input(self, x: torch.Tensor) -> None:
        """Raises for a wrong rank or channel count, and `InputSizeError` for a spatial size not
        divisible by the total stride or one whose bottleneck would have a single voxel.

        (The released code runs indivisible inputs and silently interpolates the decoder's
        upsampled maps to the skip sizes; nnU-Net's sliding window always feeds divisible patches.)
        """
        name = type(self).__name__
        if x.dim() != 5:
            raise ValueError(f"{name} expects a 5-D input (N, C, D, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.input_channels:
            raise ValueError(f"{name} was built for {self.input_channels} input channel(s), got {x.shape[1]}")
        size = tuple(int(s) for s in x.shape[2:])
        smallest = " or ".join(str(s) for s in self.min_input_sizes)
        if any(s % t for s, t in zip(size, self.total_stride)):
            raise InputSizeError(
                f"{name}: input spatial size (D, H, W) = {size} is not divisible by the network's total "
                f"stride {self.total_stride}; pad it to e.g. {self.suggest_input_size(size)} (the smallest "
                f"sizes it accepts are {smallest}; the released code would run it and silently interpolate).")
        bottleneck = self.bottleneck_size(size)
        if math.prod(bottleneck) <= 1:
            raise InputSizeError(
                f"{name}: input spatial size (D, H, W) = {size} is too small, its bottleneck would be "
                f"{bottleneck} = one voxel and InstanceNorm needs more than one; the smallest sizes it "
                f"accepts are {smallest}, so pad it to e.g. {self.suggest_input_size(size)}.")

    # ----------------------------------------------------------------------------------------
    def inception_layers(self) -> list[InceptionDWConv3d]:
        return [m for m in self.modules() if isinstance(m, InceptionDWConv3d)]

    def set_backend(self, backend: str, *, norm_backend: str | None = None) -> "_UNet":
        """Sets the backend of every InceptionDWConv3d ("auto", "reference", "cpu", "cuda", "triton")
        and of every InstanceNorm + LeakyReLU pair: ``norm_backend`` ("auto", "reference", "cpu", "cuda", "triton"),
        by default PyTorch's ops with "reference" and the fused op otherwise (`blocks.norm_backend_for`).
        A norm backend other than "reference" also makes the decoder write its transposed convs
        straight into the concatenations (`UNetDecoder.fused_upsampling`)."""
        check_backend_name(backend)  # checked here too for nets without InceptionDWConv3d layers
        norm_backend = norm_backend_for(backend) if norm_backend is None else norm_backend
        for m in self.modules():
            if isinstance(m, ConvNormAct):
                m.norm_backend = norm_backend
        self.use_inference_shortcuts(norm_backend != "reference")
        for m in self.inception_layers():
            m.backend = backend
        return self

    def use_inference_shortcuts(self, enabled: bool) -> "_UNet":
        """Whether inference (no gradient recorded) on the fused path takes the shortcuts around
        PyTorch's modules that compute the same sums: the decoder's fused upsampling
        (`UNetDecoder.fused_upsampling`) and the 1-channel first layer through oneDNN
        (`ConvNormAct.onednn_single_channel`). On by default with fused norms; off where a FLOP
        counter must attribute every op to its module (models/complexity.py)."""
        self.decoder.fused_upsampling = enabled
        for m in self.modules():
            if isinstance(m, ConvNormAct):
                m.onednn_single_channel = enabled
        return self

    @property
    def norm_backend(self) -> str | None:
        """The norm backend shared by all conv-norm-act layers ("mixed" if they differ)."""
        names = {m.norm_backend for m in self.modules() if isinstance(m, ConvNormAct)}
        if not names:
            return None
        return names.pop() if len(names) == 1 else "mixed"

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

    def is_released_form(self, state_dict: Mapping[str, Any]) -> bool:
        """Whether `state_dict` needs the released-form loader: it has a key this network's own
        state dict lacks that is a released alias or a wrapped (``module.``/``_orig_mod.``) key."""
        from .released import released_pairs, strip_prefixes

        own = set(self.state_dict().keys())
        extra = [k for k in state_dict if k not in own]
        if not extra:
            return False
        known = own | {r for r, _ in released_pairs(self)}
        return any(strip_prefixes(k) in known for k in extra)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """nn.Module.load_state_dict, also for the released form (880 aliased keys, wrapper
        prefixes): such a dict goes through `load_released_state_dict`, which always loads every
        tensor or nothing (``strict`` does not relax it). nnU-Net's predictor and trainer call
        this with a checkpoint's ``network_weights``."""
        if self.is_released_form(state_dict):
            self.load_released_state_dict(state_dict)
            return _IncompatibleKeys([], [])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_plans(cls, arch_kwargs: Mapping[str, Any], input_channels: int, num_classes: int,
                   backend: str = "auto", deep_supervision: bool | None = None) -> "_UNet":
        """Builds the network from an nnU-Net v2 plans ``architecture`` entry (or its ``arch_kwargs``).

        ``input_channels`` and ``num_classes`` come from the dataset (nnU-Net takes them from
        dataset.json, not from the plans). Only the settings these networks have are accepted:
        Conv3d, InstanceNorm3d, LeakyReLU, no dropout; anything else raises `ArchitectureError`.
        """
        kwargs = kwargs_from_plans(arch_kwargs)
        if deep_supervision is not None:
            kwargs["deep_supervision"] = deep_supervision
        return cls(input_channels=input_channels, num_classes=num_classes, backend=backend, **kwargs)

    def extra_repr(self) -> str:
        return (f"input_channels={self.input_channels}, num_classes={self.num_classes}, "
                f"features_per_stage={self.features_per_stage}, strides={self.strides}")


_PLANS_KEYS = {"n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage",
               "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op",
               "dropout_op_kwargs", "nonlin", "nonlin_kwargs", "deep_supervision"}


def kwargs_from_plans(arch: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor keyword arguments from an nnU-Net plans ``architecture``/``arch_kwargs`` dict
    (raises `ArchitectureError` for keys or settings these networks do not have)."""
    if "arch_kwargs" in arch:
        arch = arch["arch_kwargs"]
    arch = {k: v for k, v in arch.items() if k != "_kw_requires_import"}
    unknown = sorted(set(arch) - _PLANS_KEYS)
    if unknown:
        raise ArchitectureError(f"unsupported nnU-Net arch_kwargs: {unknown}")
    if "features_per_stage" not in arch or "strides" not in arch:
        raise ArchitectureError("nnU-Net arch_kwargs need features_per_stage and strides")
    features = list(arch["features_per_stage"])
    out: dict[str, Any] = {"features_per_stage": features, "strides": arch["strides"]}
    for key in ("kernel_sizes", "n_conv_per_stage", "n_conv_per_stage_decoder", "conv_bias", "deep_supervision"):
        if key in arch:
            out[key] = arch[key]
    out.update(_translate_nnunet_keywords(len(features), {k: arch.get(k) for k in NNUNET_KEYWORDS}))
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
            raise ArchitectureError(f"DualBranchUNet: features_per_stage[0] must be even, got {features[0]}")
        stem = features[0] // 2
        self.input_conv = layers.released_layer(input_channels, stem, 3, 1)
        cins = [stem] + features[:-1]
        self.stages = nn.ModuleList(DualBranchBlock(layers, cin, cout, k, s)
                                    for cin, cout, k, s in zip(cins, features, kernel_sizes, strides))

    def applied_strides(self) -> list[Triple]:
        # a stage's output has the IDC branch's size, and the IDC rule always honours the stride
        return [_layer_stride(stage.idc_branch.convs[0]) for stage in self.stages]

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
            StackedConvs([layers.released_layer(cin, cout, k, s)]
                         + [layers.released_layer(cout, cout, k, 1) for _ in range(n - 1)])
            for cin, cout, k, s, n in zip(cins, features, kernel_sizes, strides, n_convs))

    def applied_strides(self) -> list[Triple]:
        return [_layer_stride(stage.convs[0]) for stage in self.stages]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


def _layer_stride(layer) -> Triple:
    """The stride a ConvNormAct layer applies: its Conv3d's, or none for an InceptionDWConv3d."""
    conv = layer.conv
    return tuple(conv.stride) if isinstance(conv, nn.Conv3d) else (1, 1, 1)  # type: ignore[return-value]


class DualBranchUNet(_UNet):
    """The released network: a 3D U-Net whose encoder stages each fuse an IDC branch and a
    residual branch. Defaults are the release's: 8,227,320 parameters, input sizes divisible by
    (8, 16, 16) and at least (16, 16, 16), (8, 32, 16) or (8, 16, 32). ``backend`` is the
    InceptionDWConv3d backend of all 28 such layers.

    Input (N, input_channels, D, H, W) -> logits (N, num_classes, D, H, W).
    """

    _fixed_encoder_convs = 2

    def _build_encoder(self, n_convs):
        return _DualBranchEncoder(self._layers, self.input_channels, list(self.features_per_stage),
                                  list(self.strides), list(self.kernel_sizes))


class SingleBranchUNet(_UNet):
    """The paper's single-branch ablation: nnU-Net's plain encoder built with the released CNA rule
    (InceptionDWConv3d whenever in == out) and the same decoder. 8,757,032 parameters by default."""


class PlainConvUNet(_UNet):
    """nnU-Net's default 3D U-Net as planned for this dataset (the ablation's baseline): 6 stages,
    32…320 features, dense 3×3×3 convolutions with bias (also on the transposed convs), affine
    InstanceNorm, LeakyReLU(0.01). 30,785,994 parameters by default. No InceptionDWConv3d, so
    ``backend`` has nothing to set (it is still validated)."""

    defaults = dict(features_per_stage=PLAIN_FEATURES, strides=PLAIN_STRIDES, conv_bias=True, norm_affine=True)
    _uses_inception = False


NETWORKS = {"dual": DualBranchUNet, "single": SingleBranchUNet, "plain": PlainConvUNet}
