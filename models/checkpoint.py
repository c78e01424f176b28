"""Reading nnU-Net v2 ``checkpoint_*.pth`` files safely and building the network they hold.

An nnU-Net checkpoint is a dict (``network_weights``, ``optimizer_state``, ``grad_scaler_state``,
``logging``, ``_best_ema``, ``current_epoch``, ``init_args``, ``trainer_name``,
``inference_allowed_mirroring_axes``). Besides tensors and plain Python containers it holds numpy
scalars and arrays (in ``logging`` and ``_best_ema``) and a ``torch.device`` (in ``init_args``).
`read_nnunet_checkpoint` loads it with ``torch.load(weights_only=True)``, allow-listing exactly
those types — never a full unpickler, which would run arbitrary code from the file.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from fusionseg_kernels.errors import CheckpointError

from .networks import NETWORKS, DualBranchUNet, PlainConvUNet, SingleBranchUNet, _UNet
from .released import strip_prefixes

# numpy's array and scalar reconstructors moved from numpy.core to numpy._core in numpy 2; a file
# names whichever module its writer had, so both names are allowed (they are the same functions).
_np_core = getattr(np, "_core", None) or np.core
_NUMPY_DTYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                 np.uint64, np.float16, np.float32, np.float64)

CHECKPOINT_SAFE_GLOBALS: list = [
    *[(_np_core.multiarray._reconstruct, f"{m}.multiarray._reconstruct") for m in ("numpy.core", "numpy._core")],
    *[(_np_core.multiarray.scalar, f"{m}.multiarray.scalar") for m in ("numpy.core", "numpy._core")],
    np.ndarray,
    np.dtype,
    *[type(np.dtype(t)) for t in _NUMPY_DTYPES],  # numpy >= 1.25 pickles dtypes by their class
    torch.device,
]
"""What ``torch.load(weights_only=True)`` may construct besides tensors and Python containers:
numpy arrays and scalars of numeric dtypes, numpy dtypes, and torch.device (what nnU-Net writes)."""


def _refused_global(message: str) -> str | None:
    """The global (a class or function) torch.load's safe unpickler refused to build, from its
    message: "Unsupported global: GLOBAL x.y" (torch <= 2.10) or "unsupported GLOBAL x.y whose
    module x is blocked" (torch >= 2.11)."""
    match = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def _unpickler_reason(err: Exception) -> str:
    """The reason in torch's weights-only unpickler message, without its advice paragraphs."""
    match = re.search(r"WeightsUnpickler error: (.+?)(?:\n\n|$)", str(err), flags=re.S)
    return " ".join(match.group(1).split()) if match else "corrupted data"


def read_nnunet_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    """The checkpoint dict, read with ``weights_only=True`` and `CHECKPOINT_SAFE_GLOBALS` allowed.

    Raises `CheckpointError` naming the file and what is wrong with it: missing, empty, not a
    PyTorch file (a text file, a truncated or corrupted archive), holding an object the loader
    refuses to build (a pickled class or function: never run code from a file), or not an nnU-Net
    checkpoint (no 'network_weights')."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
    problem = None
    try:
        with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        name = _refused_global(str(err))
        problem = (f"{path} holds code (a pickled {name}), which was not run: checkpoints may hold only "
                   f"tensors, plain containers, numpy arrays and scalars, and torch.device"
                   if name else f"{path} is not a readable PyTorch checkpoint ({_unpickler_reason(err)})")
    except Exception as err:  # anything an untrusted file makes the unpickler raise
        detail = str(err).split(".")[0].strip() or type(err).__name__
        problem = (f"{path} is not a readable PyTorch checkpoint (truncated, corrupted or another kind "
                   f"of file: {detail})")
    if problem:
        raise CheckpointError(problem)
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise CheckpointError(f"{path} is not an nnU-Net checkpoint (a dict with 'network_weights'); "
                              f"found {type(checkpoint).__name__}"
                              + (f" with keys {sorted(map(str, checkpoint))[:10]}"
                                 if isinstance(checkpoint, dict) else ""))
    return checkpoint


def _normalized_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released keys without wrappers: prefixes stripped, ``decoder.encoder.`` copies and
    ``all_modules`` aliases dropped, ``encoder.stages.<s>.0.`` -> ``encoder.stages.<s>.``."""
    out = {}
    for key, value in state_dict.items():
        key = strip_prefixes(key)
        if key.startswith("decoder.encoder.") or ".all_modules." in key:
            continue
        out[re.sub(r"^encoder\.stages\.(\d+)\.0\.", r"encoder.stages.\1.", key)] = value
    return out


def _num_classes(sd: Mapping[str, torch.Tensor], n_heads: int) -> int:
    """The class count the segmentation heads agree on. Every head carries it, so one that
    differs is the odd one out and is named (instead of blaming all the others)."""
    counts = {i: int(sd[f"decoder.seg_layers.{i}.weight"].shape[0]) for i in range(n_heads)
              if f"decoder.seg_layers.{i}.weight" in sd}
    if not counts:
        raise CheckpointError("cannot infer the network: the state dict has no decoder.seg_layers.* heads")
    values = sorted(counts.values())
    majority = max(set(values), key=values.count)
    odd = [f"decoder.seg_layers.{i}.weight has {c} classes" for i, c in counts.items() if c != majority]
    if odd and values.count(majority) > len(values) / 2:
        raise CheckpointError(f"the segmentation heads disagree on the number of classes: {'; '.join(odd)}, "
                              f"the other {values.count(majority)} have {majority}")
    if odd:
        raise CheckpointError("the segmentation heads disagree on the number of classes: "
                              + "; ".join(f"decoder.seg_layers.{i}.weight has {c}" for i, c in counts.items()))
    return majority


def infer_network_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[type[_UNet], dict]:
    """(network class, constructor kwargs) for a released-form state dict, read from its keys and
    shapes: the class from the layer names (``idc_branch`` -> dual, InceptionDWConv3d layers ->
    single, else plain); features and strides from the transposed convs (weight (below, skip,
    *stride)), stage 0's stride being (1, 1, 1) as in every nnU-Net plan; input channels and
    classes from the first and last layers; kernel sizes, conv counts, conv bias and affine norm
    from the dense layers. Norm eps and LeakyReLU slope are not stored: nnU-Net's 1e-5 and 0.01."""
    sd = _normalized_keys(state_dict)
    keys = list(sd)
    if any(".idc_branch." in k for k in keys):
        cls = DualBranchUNet
    elif any(".dwconv_hwd." in k for k in keys):
        cls = SingleBranchUNet
    else:
        cls = PlainConvUNet
    n_up = len({k.split(".")[2] for k in keys if k.startswith("decoder.transpconvs.")})
    if n_up == 0:
        raise CheckpointError("cannot infer the network: no decoder.transpconvs.* tensors in the state dict")
    n = n_up + 1
    features, strides = [0] * n, [(1, 1, 1)] * n
    for i in range(n_up):
        w = sd[f"decoder.transpconvs.{i}.weight"]
        features[n - 1 - i], features[n - 2 - i] = int(w.shape[0]), int(w.shape[1])
        strides[n - 1 - i] = tuple(int(s) for s in w.shape[2:])
    num_classes = _num_classes(sd, n_up)

    def first_layer_in(prefix: str, stem_channels: int) -> int:
        dense = sd.get(f"{prefix}.conv.weight")
        return int(dense.shape[1]) if dense is not None else stem_channels  # an IDC layer: in == out

    if cls is DualBranchUNet:
        input_channels = first_layer_in("encoder.input_conv", features[0] // 2)
        dense_first = [f"encoder.stages.{s}.residual_branch.convs.0.conv.weight" for s in range(n)]
    else:
        input_channels = first_layer_in("encoder.stages.0.convs.0", features[0])
        dense_first = [f"encoder.stages.{s}.convs.0.conv.weight" for s in range(n)]
    kernel_sizes = [tuple(int(k) for k in sd[key].shape[2:]) if key in sd else (3, 3, 3) for key in dense_first]

    def count_convs(prefix: str) -> int:
        return len({m.group(1) for k in keys for m in [re.match(re.escape(prefix) + r"\.convs\.(\d+)\.", k)] if m})

    kwargs: dict[str, Any] = dict(input_channels=input_channels, num_classes=num_classes,
                                  features_per_stage=features, strides=strides, kernel_sizes=kernel_sizes,
                                  n_conv_per_stage_decoder=[count_convs(f"decoder.stages.{i}") for i in range(n_up)],
                                  conv_bias="decoder.transpconvs.0.bias" in sd,
                                  norm_affine=any(".norm.weight" in k for k in keys))
    if cls is not DualBranchUNet:
        kwargs["n_conv_per_stage"] = [count_convs(f"encoder.stages.{s}") for s in range(n)]
    return cls, kwargs


def load_nnunet_checkpoint(path: str | os.PathLike, network: str | type[_UNet] = "auto",
                           backend: str = "auto", map_location="cpu", **network_kwargs) -> _UNet:
    """Builds the network an nnU-Net ``checkpoint_*.pth`` holds and loads its weights.

    Args:
        path: the checkpoint file (read safely, see `read_nnunet_checkpoint`).
        network: "auto" (inferred from the weights, see `infer_network_from_state_dict`), "dual",
            "single", "plain" or a network class.
        backend: InceptionDWConv3d backend of the returned network.
        network_kwargs: override inferred constructor arguments (e.g. ``norm_eps``).

    Returns the network in eval mode on ``map_location``; ``model.checkpoint_info`` holds the
    checkpoint's ``trainer_name``, ``current_epoch`` and ``inference_allowed_mirroring_axes``.
    Raises `ReleasedStateDictError` naming every tensor that does not fit.
    """
    if isinstance(network, str) and network != "auto" and network not in NETWORKS:
        raise CheckpointError(f"unknown network {network!r}; choose 'auto' or one of {', '.join(NETWORKS)}")
    checkpoint = read_nnunet_checkpoint(path, map_location=map_location)
    weights = checkpoint["network_weights"]
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"{os.fspath(path)}: 'network_weights' is a {type(weights).__name__}, not a state dict")
    try:
        cls, kwargs = infer_network_from_state_dict(weights)
    except CheckpointError as err:
        raise CheckpointError(f"{os.fspath(path)}: {err}") from None
    if network != "auto":
        cls = NETWORKS[network] if isinstance(network, str) else network
    kwargs.update(network_kwargs)
    if cls is DualBranchUNet:
        kwargs.pop("n_conv_per_stage", None)
    model = cls(backend=backend, **kwargs)
    try:
        model.load_released_state_dict(weights)
    except CheckpointError as err:
        raise type(err)(f"{os.fspath(path)}: {err}") from None
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.checkpoint_info = {k: checkpoint.get(k) for k in
                             ("trainer_name", "current_epoch", "inference_allowed_mirroring_axes")}
    return model.eval()
