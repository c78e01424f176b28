"""The released (nnU-Net) state-dict form of the networks, to and from this package's clean tree.

The release registers every conv-norm-act layer twice — as ``<layer>.conv…``/``<layer>.norm…`` and
as ``<layer>.all_modules.0…``/``<layer>.all_modules.1…`` — wraps its InceptionDWConv3d in one more
module (``<layer>.conv.conv.dwconv_*``), wraps each encoder stage in an nn.Sequential
(``encoder.stages.<s>.0.…``) and lets the decoder hold the encoder again (``decoder.encoder.…``).
So the released dual-branch checkpoint has 880 entries for 247 distinct tensors. `released_pairs`
walks a network and lists, in the release's order, every released key with the clean key it
aliases; loading and saving both use that one list.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import torch
from torch import nn

from fusionseg_kernels.errors import ReleasedStateDictError

from .blocks import ConvNormAct

PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DistributedDataParallel wrappers


def _own_tensors(module: nn.Module) -> Iterator[str]:
    for name, p in module._parameters.items():
        if p is not None:
            yield name
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent_buffers_set:
            yield name


def _walk(module: nn.Module, clean: str, released: str) -> Iterator[tuple[str, str]]:
    """(released key, clean key) pairs of `module`, in the release's registration order."""
    if isinstance(module, ConvNormAct):
        op_prefix = "conv." if module.is_inception else ""  # the release's extra wrapper
        primary, alias = [], []
        for name, _ in module.conv.named_parameters():
            primary.append((f"{released}conv.{op_prefix}{name}", f"{clean}conv.{name}"))
            alias.append((f"{released}all_modules.0.{op_prefix}{name}", f"{clean}conv.{name}"))
        for name, _ in module.norm.state_dict().items():
            primary.append((f"{released}norm.{name}", f"{clean}norm.{name}"))
            alias.append((f"{released}all_modules.1.{name}", f"{clean}norm.{name}"))
        yield from primary
        yield from alias
        return
    for name in _own_tensors(module):
        yield f"{released}{name}", f"{clean}{name}"
    wrap = getattr(module, "released_stage_wrapper", False)
    for child_name, child in module.named_children():
        if wrap and child_name == "stages":
            for s, stage in child.named_children():
                yield from _walk(stage, f"{clean}stages.{s}.", f"{released}stages.{s}.0.")
        else:
            yield from _walk(child, f"{clean}{child_name}.", f"{released}{child_name}.")


def released_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Every (released key, clean key) pair of `model`, in the released state dict's order:
    the encoder, the decoder's copy of it (``decoder.encoder.``), then the decoder's own layers."""
    pairs = list(_walk(model.encoder, "encoder.", "encoder."))
    pairs += [(f"decoder.{r}", c) for r, c in pairs]
    pairs += list(_walk(model.decoder, "decoder.", "decoder."))
    return pairs


def released_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The released form of model.state_dict(); aliased entries share storage (as in the release)."""
    clean = model.state_dict(keep_vars=False)
    return {r: clean[c] for r, c in released_pairs(model)}


def strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def load_released_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copies a released-form state dict into `model`.

    Accepts the release's 880-key form (``conv``/``all_modules`` aliases, ``decoder.encoder.``
    copies), this package's clean keys, or a mix; strips ``_orig_mod.`` and ``module.`` prefixes.
    Every alias of a tensor must be equal to the others. Raises `ReleasedStateDictError` naming
    every key it cannot place, every shape mismatch, every disagreeing alias and every missing
    tensor — nothing is loaded unless everything is right.
    """
    clean_sd = model.state_dict()
    to_clean = {c: c for c in clean_sd}
    to_clean.update(released_pairs(model))

    sources: dict[str, list[tuple[str, torch.Tensor]]] = {}
    unplaceable, bad_type = [], []
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            bad_type.append(f"{key} ({type(value).__name__})")
            continue
        target = to_clean.get(strip_prefixes(key))
        if target is None:
            unplaceable.append(key)
        else:
            sources.setdefault(target, []).append((key, value))

    problems = []
    if bad_type:
        problems.append(f"{len(bad_type)} entries are not tensors: " + ", ".join(bad_type))
    if unplaceable:
        problems.append(f"{len(unplaceable)} tensors match no layer of this {type(model).__name__}: "
                        + ", ".join(unplaceable))
    shape_errors, disagreements = [], []
    for target, found in sources.items():
        want = tuple(clean_sd[target].shape)
        for key, value in found:
            if tuple(value.shape) != want:
                shape_errors.append(f"{key} has shape {tuple(value.shape)}, the model's {target} has {want}")
        first_key, first = found[0]
        for key, value in found[1:]:
            if value.shape == first.shape and not torch.equal(value.to(first.dtype), first):
                disagreements.append(f"{key} != {first_key}")
    if shape_errors:
        problems.append(f"{len(shape_errors)} shape mismatches: " + "; ".join(shape_errors))
    if disagreements:
        problems.append(f"{len(disagreements)} aliases disagree with the tensor they should equal: "
                        + "; ".join(disagreements))
    missing = [c for c in clean_sd if c not in sources]
    if missing:
        released_names = {}
        for r, c in released_pairs(model):
            released_names.setdefault(c, r)
        problems.append(f"{len(missing)} tensors of the model are missing: "
                        + ", ".join(f"{released_names.get(c, c)} (clean name {c})" for c in missing))
    if problems:
        raise ReleasedStateDictError(f"cannot load this state dict into {type(model).__name__}:\n  - "
                                     + "\n  - ".join(problems))
    with torch.no_grad():
        for target, found in sources.items():
            clean_sd[target].copy_(found[0][1])
