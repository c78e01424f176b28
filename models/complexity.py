"""Parameters and multiply-accumulates (MACs) of the networks, broken down by layer type.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) without running any
arithmetic, in two independent ways whose totals must agree:

- ``counter="fused"``: the network with ``backend="cpu"`` traced on fake CPU tensors
  (``FakeTensorMode``), so each InceptionDWConv3d is the single op
  ``fusionseg.inception_dwconv3d_forward`` and is counted by the FLOP formula registered for it;
- ``counter="reference"``: the network on the meta device with ``backend="reference"``, so each
  InceptionDWConv3d is four depthwise ``aten.convolution`` calls counted by torch's own formula.

(Fake CPU tensors are used for the fused count so that the counted op is exactly the one a CPU
run dispatches to; meta tensors reach the same fused op and give the same count.)
Only convolutions carry MACs in this counter; InstanceNorm, LeakyReLU, additions and the
trilinear resizes are not counted (nor were they in the figures measured on the original code).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fusionseg_kernels.modules import InceptionDWConv3d

from .networks import NETWORKS, _UNet

PATCH = (96, 128, 128)

CATEGORIES = ("dense Conv3d", "InceptionDWConv3d", "ConvTranspose3d", "segmentation heads", "InstanceNorm affine")

# Published figures, per 96×128×128 patch (so shown for that patch only). "measured on original":
# the released code measured with torch.utils.flop_counter (MACs = FLOPs / 2). "paper printed": the
# values the paper's tables print; None where it prints none.
PUBLISHED = {
    "dual": {"measured_params": 8_227_320, "measured_gmacs": 184.5,
             "paper_params_m": 8.23, "paper_gmacs": 186.75},
    "single": {"measured_params": 8_757_032, "measured_gmacs": 192.2,
               "paper_params_m": None, "paper_gmacs": None},
    "plain": {"measured_params": 30_785_994, "measured_gmacs": 358.2,
              "paper_params_m": None, "paper_gmacs": 416.78},
}


def _category(module: nn.Module, is_head: bool) -> str | None:
    if isinstance(module, InceptionDWConv3d):
        return "InceptionDWConv3d"
    if isinstance(module, nn.ConvTranspose3d):
        return "ConvTranspose3d"
    if isinstance(module, nn.Conv3d):
        return "segmentation heads" if is_head else "dense Conv3d"
    if isinstance(module, nn.InstanceNorm3d):
        return "InstanceNorm affine"
    return None


def _leaf_layers(model: _UNet) -> dict[str, tuple[nn.Module, str]]:
    heads = {id(m) for m in model.decoder.seg_layers}
    out = {}
    for name, m in model.named_modules():
        cat = _category(m, id(m) in heads)
        if cat is not None:
            out[name] = (m, cat)
    return out


@dataclass
class Complexity:
    network: str
    patch: tuple[int, int, int]
    counter: str
    params: dict[str, int] = field(default_factory=dict)     # per category
    macs: dict[str, int] = field(default_factory=dict)       # per category, per patch (batch 1)
    ops: dict[str, int] = field(default_factory=dict)        # MACs per aten/fusionseg op name
    idc_calls: int = 0

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())

    def as_dict(self) -> dict:
        d = asdict(self)
        d["total_params"], d["total_macs"] = self.total_params, self.total_macs
        return d


def measure(network: str | _UNet, patch=PATCH, counter: str = "fused") -> Complexity:
    """Parameters and MACs per patch (batch 1) of a network, by layer category.

    network: "dual", "single", "plain" (the default configurations) or a network instance (only
    its class and ``config`` are used; it is rebuilt on fake/meta tensors).
    """
    if counter not in ("fused", "reference"):
        raise ValueError(f"counter must be 'fused' or 'reference', got {counter!r}")
    if isinstance(network, str):
        name, cls, config = network, NETWORKS[network], {}
    else:
        name, cls, config = type(network).__name__, type(network), dict(network.config)
    patch = tuple(int(p) for p in patch)
    backend = "cpu" if counter == "fused" else "reference"

    if counter == "fused":
        from torch._subclasses.fake_tensor import FakeTensorMode

        mode, device = FakeTensorMode(), "cpu"
    else:
        import contextlib

        mode, device = contextlib.nullcontext(), "meta"
    with mode:
        with torch.device(device):
            model = cls(backend=backend, **config)
            # the same MACs, but attributed to the modules that own them (the fused upsampling runs
            # the ConvTranspose3d's matmul outside its forward, where the counter cannot see whose
            # it is; oneDNN's convolution op is not one the counter counts)
            model.use_inference_shortcuts(False)
            x = torch.empty(1, model.input_channels, *patch)
        layers = _leaf_layers(model)
        with torch.no_grad(), FlopCounterMode(display=False) as flop_counter:
            model(x)
    result = Complexity(network=name, patch=patch, counter=counter)
    result.idc_calls = sum(cat == "InceptionDWConv3d" for _, cat in layers.values())
    for cat in CATEGORIES:
        result.params[cat] = 0
        result.macs[cat] = 0
    for _, (module, cat) in layers.items():
        result.params[cat] += sum(p.numel() for p in module.parameters(recurse=True))
    root = type(model).__name__
    counts = flop_counter.get_flop_counts()
    for layer_name, (_module, cat) in layers.items():
        result.macs[cat] += sum(counts.get(f"{root}.{layer_name}", {}).values()) // 2
    for op, flops in counts.get("Global", {}).items():
        result.ops[str(op)] = flops // 2
    total = flop_counter.get_total_flops() // 2
    if total != result.total_macs:
        raise RuntimeError(f"{name}: {total} MACs counted but {result.total_macs} attributed to layers; "
                           f"an op outside the known layer types carries MACs: {result.ops}")
    if result.total_params != sum(p.numel() for p in model.parameters()):
        raise RuntimeError(f"{name}: parameters outside the known layer types")
    return result


def report(networks=("dual", "single", "plain"), patch=PATCH) -> list[dict]:
    """For each network (each named once, in the order given): the fused and reference counts
    (which must agree) and, for the default 96×128×128 patch, the published figures."""
    rows = []
    patch = tuple(int(p) for p in patch)
    for name in dict.fromkeys(networks):
        fused = measure(name, patch, "fused")
        reference = measure(name, patch, "reference")
        if (fused.total_macs, fused.total_params) != (reference.total_macs, reference.total_params):
            raise RuntimeError(f"{name}: fused-op count {fused.total_macs} != reference count "
                               f"{reference.total_macs}: the FLOP formula of the fused op is wrong")
        rows.append({"network": name, "fused": fused.as_dict(), "reference": reference.as_dict(),
                     "published": PUBLISHED.get(name) if patch == PATCH else None})
    return rows


_GENERAL_NOTES = """\
- All MACs are per {patch} patch at batch 1, counting convolutions only (torch.utils.flop_counter;
  MACs = FLOPs / 2). The fused op is counted through the FLOP formula registered for
  fusionseg.inception_dwconv3d_forward (4 depthwise convs: 2·N·voxels·gc·(27+11+11+11) FLOPs) and
  agrees exactly with the count of the reference backend's four aten.convolution calls.
- Parameters include the segmentation heads of every decoder stage (4 for dual/single, 5 for plain),
  which exist for state-dict compatibility; only the last one runs (no deep supervision), so the other
  heads add parameters but no MACs.
"""

# Only meaningful beside the default patch's published figures.
_PUBLISHED_NOTES = """\
- Dual: the paper prints "186.75 G FLOPs"; it is a MAC count (184.48 G MACs = 368.97 GFLOP here, as
  measured on the released code). The remaining 1.2 % (2.27 G) is not convolution work; the paper's
  counting tool is not named, so which extra layers it counted is not known.
- Plain nnU-Net: the paper's table prints 416.78 G; nnU-Net's plan for this dataset
  (docs/models.md) measures 358.2 G MACs both on the original code and here. The printed value does not
  correspond to this configuration at a 96×128×128 patch; its source is not known."""


def explanation(patch=PATCH) -> str:
    """How the counts were made (and, for the default patch, how they relate to the published ones)."""
    notes = _GENERAL_NOTES.format(patch="×".join(map(str, patch))).rstrip("\n")
    return notes + ("\n" + _PUBLISHED_NOTES if tuple(patch) == PATCH else "") + "\n"


def format_table(rows: list[dict]) -> str:
    """Markdown tables: breakdown per network, then totals beside the published figures
    (shown only for the 96×128×128 patch they were measured on)."""
    lines = ["| network | layer type | parameters | GMACs / patch |", "|---|---|---:|---:|"]
    for row in rows:
        f = row["fused"]
        for cat in CATEGORIES:
            if f["params"][cat] or f["macs"][cat]:
                lines.append(f"| {row['network']} | {cat} | {f['params'][cat]:,} | {f['macs'][cat] / 1e9:.3f} |")
        lines.append(f"| {row['network']} | **total** | **{f['total_params']:,}** | **{f['total_macs'] / 1e9:.3f}** |")
    lines += ["", "| network | params here | params measured on original | params printed in paper "
              "| GMACs here | GMACs measured on original | printed in paper | InceptionDWConv3d layers |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        f, pub = row["fused"], row["published"] or {}

        def fmt(v, spec):
            return "—" if v is None else format(v, spec)

        lines.append(f"| {row['network']} | {f['total_params']:,} | {fmt(pub.get('measured_params'), ',')} | "
                     f"{fmt(pub.get('paper_params_m'), '.2f')}{' M' if pub.get('paper_params_m') else ''} | "
                     f"{f['total_macs'] / 1e9:.2f} | {fmt(pub.get('measured_gmacs'), '.1f')} | "
                     f"{fmt(pub.get('paper_gmacs'), '.2f')} | {f['idc_calls']} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class InceptionCall:
    """One InceptionDWConv3d call of a network's forward pass."""

    module: str                              # the layer's name in the network (clean form)
    shape: tuple[int, int, int, int, int]    # its input (N, C, D, H, W)
    gc: int                                  # channels per conv group


def inception_calls(network: str | _UNet = "dual", patch=PATCH, batch: int = 1) -> list[InceptionCall]:
    """Every InceptionDWConv3d call of one forward pass at this patch, in order, traced on the
    meta device (no memory, no arithmetic). The released network has 28."""
    model = network if isinstance(network, _UNet) else None
    with torch.device("meta"):
        if model is None:
            model = NETWORKS[network](backend="reference")
        x = torch.empty(batch, model.input_channels, *patch)
    calls: list[InceptionCall] = []
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, name=name: calls.append(InceptionCall(name, tuple(args[0].shape), mod.gc)))
        for name, m in model.named_modules() if isinstance(m, InceptionDWConv3d)]
    try:
        with torch.no_grad():
            model.to("meta")(x)
    finally:
        for h in hooks:
            h.remove()
    return calls


def distinct_inception_calls(network: str | _UNet = "dual", patch=PATCH, batch: int = 1,
                             scale: int = 1) -> list[tuple[tuple[int, ...], int, int]]:
    """[(shape, gc, number of calls)] of the distinct InceptionDWConv3d calls, largest first;
    `scale` divides the spatial sizes (for quick runs). What the benchmarks time."""
    counts: dict[tuple, int] = {}
    for call in inception_calls(network, patch, batch):
        n, c, d, h, w = call.shape
        key = ((n, c, max(1, d // scale), max(1, h // scale), max(1, w // scale)), call.gc)
        counts[key] = counts.get(key, 0) + 1
    return sorted(((s, gc, k) for (s, gc), k in counts.items()), key=lambda t: (-math.prod(t[0]), t[1]))
