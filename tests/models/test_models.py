"""The networks of docs/models.md: structure, parameter counts, released state-dict form, conformance with
the original implementation's logits, backends, input checks, plans."""
from __future__ import annotations

import json
import re
import os

import pytest
import torch

from tests.helpers import requires_gpu
from tests.helpers import rel_l2

import fusionseg_kernels
from fusionseg_kernels import InceptionDWConv3d
from fusionseg_kernels._extension import has_cuda_kernels
from fusionseg_kernels.models import (DualBranchUNet, InputSizeError, PlainConvUNet, ReleasedStateDictError,
                                      SingleBranchUNet, kwargs_from_plans, released_pairs)

torch.manual_seed(0)

TINY_FEATURES = (16, 32, 32, 64, 64)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def fixture():
    from tests.helpers import DATA_DIR

    return torch.load(DATA_DIR / "dual_branch_tiny_conformance.pt", weights_only=True)


@pytest.fixture(scope="module")
def tiny(fixture):
    model = DualBranchUNet(features_per_stage=fixture["features_per_stage"])
    return model.load_released_state_dict(fixture["state_dict"]).eval()


# --- parameter counts and structure -----------------------------------------------------------

@pytest.mark.parametrize("cls, count", [(DualBranchUNet, 8_227_320), (SingleBranchUNet, 8_757_032),
                                        (PlainConvUNet, 30_785_994)])
def test_parameter_counts(cls, count):
    assert n_params(cls()) == count


def test_each_layer_registered_once():
    model = DualBranchUNet()
    params = list(model.parameters())
    assert len(params) == len({id(p) for p in params}) == len(model.state_dict()) == 247
    assert not any(".all_modules." in k or k.startswith("decoder.encoder.") for k in model.state_dict())


def test_released_cna_quirks():
    model = DualBranchUNet()
    # CNA(in, out, k, stride) is an InceptionDWConv3d whenever in == out, stride ignored:
    # stage 1's residual branch (32 -> 32, stride 2) stays at full resolution.
    stage1 = model.encoder.stages[1]
    assert isinstance(stage1.residual_branch.convs[0].conv, InceptionDWConv3d)
    assert isinstance(stage1.residual_branch.shortcut.conv, InceptionDWConv3d)
    # the IDC branch honours the stride: a dense strided Conv3d
    assert isinstance(stage1.idc_branch.convs[0].conv, torch.nn.Conv3d)
    assert stage1.idc_branch.convs[0].conv.stride == (2, 2, 2)
    # stage 4 (256 -> 320): dense residual path, 1x1x1 shortcut with stride (1, 2, 2), still present
    stage4 = model.encoder.stages[4]
    assert stage4.residual_branch.shortcut.conv.kernel_size == (1, 1, 1)
    assert stage4.residual_branch.shortcut.conv.stride == (1, 2, 2)
    assert all(s.residual_branch.shortcut is not None for s in model.encoder.stages)
    # no activation after the residual main path's second layer or the shortcut
    assert stage1.residual_branch.convs[1].act is None and stage1.residual_branch.shortcut.act is None
    assert stage1.residual_branch.convs[0].act is not None
    # fusion is CNA(2b, F, 1, 1) = InceptionDWConv3d(F)
    assert all(isinstance(s.fusion_conv.conv, InceptionDWConv3d) for s in model.encoder.stages)
    # no bias on dense convs, affine-free norms, heads with bias
    dense = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all((m.bias is None) != (m in list(model.decoder.seg_layers)) for m in dense)
    assert all(not m.affine for m in model.modules() if isinstance(m, torch.nn.InstanceNorm3d))
    assert len(model.decoder.seg_layers) == 4 and len(model.inception_layers()) == 28


def _released_name(clean_to_released, module_name):
    # InceptionDWConv3d at clean "<layer>.conv" is released "<layer>.conv.conv"
    return clean_to_released[f"{module_name}.dwconv_hwd.weight"].rsplit(".dwconv_hwd.weight", 1)[0]


@pytest.mark.parametrize("variant, cls", [("dual_branch", DualBranchUNet), ("single_branch", SingleBranchUNet)])
def test_inception_calls_match_original(variant, cls, data_dir):
    """Every InceptionDWConv3d call, in forward order, with the original's input shape and split
    (tests/data/idc_layer_shapes.json), traced on the meta device."""
    from fusionseg_kernels.models.complexity import distinct_inception_calls, inception_calls

    expected = json.loads((data_dir / "idc_layer_shapes.json").read_text())
    with torch.device("meta"):
        model = cls(backend="reference")
    clean_to_released = {c: r for r, c in released_pairs(model) if not r.startswith("decoder.encoder.")
                         and ".all_modules." not in r}
    batch, _, *patch = expected["input"]
    calls = inception_calls(model, patch=tuple(patch), batch=batch)  # what the benchmarks time
    got = [{"module": _released_name(clean_to_released, c.module), "shape_ncdhw": list(c.shape),
            "split": [c.shape[1] - 4 * c.gc] + [c.gc] * 4} for c in calls]
    assert got == expected[variant]
    assert sum(n for _, _, n in distinct_inception_calls(model, tuple(patch), batch)) == len(expected[variant])


# --- released state-dict form ------------------------------------------------------------------

@pytest.mark.parametrize("variant, cls", [("dual", DualBranchUNet), ("single", SingleBranchUNet)])
def test_released_state_dict_matches_release(variant, cls, data_dir):
    expected = json.loads((data_dir / f"{variant}_branch_state_dict_keys.json").read_text())
    model = cls()
    released = model.released_state_dict()
    assert [(k, list(v.shape)) for k, v in released.items()] == [(k, list(s)) for k, s in expected["state_dict"]]
    assert n_params(model) == expected["num_parameters"]
    # aliases share storage, as in the release; each distinct tensor is one parameter
    assert len({v.data_ptr() for v in released.values()}) == len(model.state_dict())


def test_released_round_trip_full_size():
    a, b = DualBranchUNet(), DualBranchUNet()
    released = a.released_state_dict()
    assert len(released) == 880
    b.load_released_state_dict(released)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_conformance_fixture_state_dict_loads_exactly(fixture, tiny):
    sd = fixture["state_dict"]
    out = tiny.released_state_dict()
    assert set(out) == set(sd)
    assert all(torch.equal(out[k], sd[k]) for k in sd)


def test_load_accepts_wrapper_prefixes(fixture, tiny):
    for prefix in ("_orig_mod.", "module.", "module._orig_mod."):
        model = DualBranchUNet(features_per_stage=TINY_FEATURES)
        model.load_released_state_dict({prefix + k: v for k, v in fixture["state_dict"].items()})
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), tiny.parameters()))


def test_load_reports_every_problem_at_once(fixture):
    sd = dict(fixture["state_dict"])
    missing = "decoder.seg_layers.3.bias"
    del sd[missing]
    sd["encoder.stages.9.0.extra.weight"] = torch.zeros(3)
    sd["decoder.transpconvs.1.weight"] = torch.zeros(1, 2, 2, 2, 2)
    bad_alias = "decoder.encoder.input_conv.all_modules.0.weight"
    sd[bad_alias] = sd[bad_alias].clone() + 1
    model = DualBranchUNet(features_per_stage=TINY_FEATURES)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ReleasedStateDictError) as info:
        model.load_released_state_dict(sd)
    msg = str(info.value)
    for needle in (missing, "encoder.stages.9.0.extra.weight", "decoder.transpconvs.1.weight",
                   bad_alias, "missing", "match no layer", "shape", "disagree"):
        assert needle in msg, needle
    # nothing was loaded
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_load_rejects_wrong_network(fixture):
    with pytest.raises(ReleasedStateDictError, match="idc_branch"):
        SingleBranchUNet(features_per_stage=TINY_FEATURES).load_released_state_dict(fixture["state_dict"])


# --- conformance with the original implementation ----------------------------------------------

def _available_backends():
    triton_skip = pytest.mark.skipif(
        not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
        reason="triton needs a CUDA GPU here (under TRITON_INTERPRET=1 the whole network is too slow)")
    cuda_skip = pytest.mark.skipif(torch.cuda.is_available() and not has_cuda_kernels(),
                                   reason="the extension was built without its CUDA kernels")
    return [pytest.param("reference"), pytest.param("cpu"), pytest.param("cuda", marks=[requires_gpu, cuda_skip]),
            pytest.param("triton", marks=triton_skip)]


@pytest.fixture
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("backend", _available_backends())
def test_conformance_tiny_float32(backend, fixture, tiny, no_tf32):
    """The original implementation's float64 logits, reproduced in float32 to rel L2 < 1e-5."""
    device = "cuda" if backend in ("cuda", "triton") else "cpu"
    if backend != "reference" and device == "cpu":
        assert fusionseg_kernels.extension_available()
    model = DualBranchUNet(features_per_stage=TINY_FEATURES, backend=backend)
    model.load_released_state_dict(fixture["state_dict"]).to(device).eval()
    with torch.no_grad():
        logits = model(fixture["input"].to(device))
    assert logits.dtype == torch.float32 and logits.shape == (1, 2, 32, 64, 64)
    err = rel_l2(logits.cpu(), fixture["expected_logits_float64"])
    assert err < 1e-5, f"{backend}: rel L2 {err:.2e}"


def test_conformance_tiny_float64(fixture, tiny):
    model = DualBranchUNet(features_per_stage=TINY_FEATURES, backend="cpu").double().eval()
    model.load_released_state_dict(fixture["state_dict"])
    with torch.no_grad():
        logits = model(fixture["input"].double())
    assert rel_l2(logits, fixture["expected_logits_float64"]) < 1e-6  # float64 in another op order


def test_training_gradients_cpu_backend_match_reference():
    """Backward through the whole network: fused CPU backend vs reference, float64."""
    torch.manual_seed(1)
    ref = DualBranchUNet(features_per_stage=TINY_FEATURES, backend="reference").double()
    fused = DualBranchUNet(features_per_stage=TINY_FEATURES, backend="cpu").double()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 8, 16, 32, dtype=torch.float64)  # bottleneck 1x1x2: InstanceNorm needs > 1 voxel
    target = torch.randint(0, 2, (2, 8, 16, 32))
    for model in (ref, fused):
        torch.nn.functional.cross_entropy(model(x), target).backward()
    # Biases of layers followed by InstanceNorm have a zero gradient up to rounding, so errors are
    # measured against the norm of the whole gradient, not each tensor's own.
    scale = torch.cat([p.grad.flatten() for p in ref.parameters() if p.grad is not None]).norm()
    for (name, p), q in zip(ref.named_parameters(), fused.parameters()):
        if name.startswith("decoder.seg_layers.") and not name.startswith("decoder.seg_layers.3"):
            assert p.grad is None and q.grad is None  # unused heads: no gradient
            continue
        assert (q.grad - p.grad).norm() <= 1e-10 * scale, name


# --- every network runs, backends agree -------------------------------------------------------

@pytest.mark.parametrize("cls", [DualBranchUNet, SingleBranchUNet, PlainConvUNet])
def test_full_size_forward_small_input(cls):
    torch.manual_seed(2)
    model = cls().eval()
    size = tuple(t * m for t, m in zip(model.total_stride, (1, 1, 2)))  # smallest InstanceNorm allows
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (1, 2, *size) and torch.isfinite(y).all()
        if model.inception_layers():
            y_ref = model.set_backend("reference")(x)
            assert rel_l2(y, y_ref) < 1e-5


def test_unused_heads_do_not_change_output():
    model = DualBranchUNet(features_per_stage=TINY_FEATURES).eval()
    x = torch.randn(1, 1, 8, 16, 32)
    with torch.no_grad():
        y = model(x)
        for head in model.decoder.seg_layers[:-1]:
            head.weight.add_(1.0)
        assert torch.equal(model(x), y)
        model.decoder.seg_layers[-1].bias.add_(1.0)
        assert not torch.equal(model(x), y)


def test_single_branch_equal_features_stride_quirk():
    """With equal consecutive features the released CNA rule ignores a stage's stride; the decoder
    then resizes (trilinear, align_corners=True) to the skip size, as the original does."""
    model = SingleBranchUNet(features_per_stage=(8, 16, 16), strides=((1, 1, 1), (2, 2, 2), (2, 2, 2))).eval()
    assert isinstance(model.encoder.stages[2].convs[0].conv, InceptionDWConv3d)
    with torch.no_grad():
        y = model(torch.randn(1, 1, 8, 8, 8))
    assert y.shape == (1, 2, 8, 8, 8)


# --- backends and inputs ---------------------------------------------------------------------

def test_backend_argument_and_set_backend():
    model = DualBranchUNet(features_per_stage=TINY_FEATURES, backend="reference")
    assert model.backend == "reference"
    assert {m.backend for m in model.inception_layers()} == {"reference"}
    assert model.set_backend("cpu") is model and model.backend == "cpu"
    model.inception_layers()[0].backend = "reference"
    assert model.backend == "mixed"
    with pytest.raises(ValueError, match="unknown backend"):
        model.set_backend("fast")
    with pytest.raises(ValueError, match="unknown backend"):
        PlainConvUNet(backend="fast")
    assert PlainConvUNet().backend is None
    # the backend does not touch the weights' initialization
    torch.manual_seed(3)
    a = DualBranchUNet(features_per_stage=TINY_FEATURES)
    torch.manual_seed(3)
    b = DualBranchUNet(features_per_stage=TINY_FEATURES, backend="reference")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_norm_backend_follows_the_network_backend_and_can_be_set_apart():
    model = DualBranchUNet(features_per_stage=TINY_FEATURES, backend="reference")
    assert model.norm_backend == "reference"
    assert model.set_backend("cpu").norm_backend == "auto"
    assert model.set_backend("cpu", norm_backend="reference").norm_backend == "reference"
    assert model.backend == "cpu"
    with pytest.raises(ValueError, match="unknown norm backend"):
        model.set_backend("cpu", norm_backend="fast")
    assert PlainConvUNet(backend="reference").norm_backend == "reference"
    assert PlainConvUNet().norm_backend == "auto"


@pytest.mark.skipif(not fusionseg_kernels.extension_available(), reason="the C++ extension is not built")
def test_fused_norm_runs_in_place_without_grad_and_out_of_place_with_it(fixture):
    """The fused path: one fusionseg norm op per InstanceNorm3d (none of PyTorch's), in place under
    no_grad; both forms give the same logits, and the reference path no fused op."""
    torch.manual_seed(0)
    model = DualBranchUNet(features_per_stage=TINY_FEATURES, backend="cpu").eval()
    tiny_input = fixture["input"]
    n_norms = sum(isinstance(m, torch.nn.InstanceNorm3d) for m in model.modules())

    def ops_called(fn):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = fn()
        names = [e.name for e in prof.events()]
        return out, {k: names.count(k) for k in ("fusionseg::instance_norm_leaky_relu_",
                                                 "fusionseg::instance_norm_leaky_relu_forward",
                                                 "aten::instance_norm")}

    with torch.no_grad():
        inplace, counts = ops_called(lambda: model(tiny_input))
    assert counts == {"fusionseg::instance_norm_leaky_relu_": n_norms,
                      "fusionseg::instance_norm_leaky_relu_forward": 0, "aten::instance_norm": 0}
    out_of_place, counts = ops_called(lambda: model(tiny_input.clone().requires_grad_()))
    assert counts["fusionseg::instance_norm_leaky_relu_forward"] == n_norms
    assert torch.equal(inplace, out_of_place.detach())
    with torch.no_grad():
        _, counts = ops_called(lambda: model.set_backend("reference")(tiny_input))
    assert counts["aten::instance_norm"] == n_norms and counts["fusionseg::instance_norm_leaky_relu_"] == 0


@pytest.mark.parametrize("size", [(33, 64, 64), (32, 60, 64), (32, 64, 65)])
def test_input_not_divisible_raises(size, tiny):
    with pytest.raises(InputSizeError, match=r"total stride \(8, 16, 16\)") as info:
        tiny(torch.zeros(1, 1, *size))
    assert "pad" in str(info.value)


def test_bad_input_rank_and_channels(tiny):
    with pytest.raises(ValueError, match="5-D"):
        tiny(torch.zeros(1, 32, 64, 64))
    with pytest.raises(ValueError, match="input channel"):
        tiny(torch.zeros(1, 2, 32, 64, 64))


def test_total_strides():
    assert DualBranchUNet().total_stride == (8, 16, 16)
    assert PlainConvUNet().total_stride == (16, 32, 32)


# --- nnU-Net plans ---------------------------------------------------------------------------

PLAIN_ARCHITECTURE = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 6,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
        "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5, "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


def test_from_plans_plain():
    model = PlainConvUNet.from_plans(PLAIN_ARCHITECTURE, input_channels=1, num_classes=2)
    assert n_params(model) == 30_785_994
    assert model.config == PlainConvUNet().config


def test_from_plans_dual_released():
    arch = dict(PLAIN_ARCHITECTURE["arch_kwargs"], n_stages=5, features_per_stage=[32, 64, 128, 256, 320],
                strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]], kernel_sizes=[[3, 3, 3]] * 5,
                n_conv_per_stage=[2] * 5, n_conv_per_stage_decoder=[2] * 4, conv_bias=False,
                norm_op_kwargs={"eps": 1e-5, "affine": False}, nonlin_kwargs={"negative_slope": 0.01, "inplace": True})
    model = DualBranchUNet.from_plans(arch, 1, 2, backend="reference")
    assert n_params(model) == 8_227_320 and model.backend == "reference"
    assert model.config == DualBranchUNet().config


@pytest.mark.parametrize("change, match", [
    ({"dropout_op": "torch.nn.Dropout3d"}, "dropout"),
    ({"norm_op": "torch.nn.BatchNorm3d"}, "InstanceNorm3d"),
    ({"n_stages": 5}, "n_stages"),
    ({"something_new": 1}, "unsupported"),
])
def test_from_plans_rejects_what_it_cannot_build(change, match):
    with pytest.raises(ValueError, match=match):
        kwargs_from_plans(dict(PLAIN_ARCHITECTURE["arch_kwargs"], **change))


def test_dual_branch_has_two_convs_per_stage():
    with pytest.raises(ValueError, match="exactly 2"):
        DualBranchUNet(n_conv_per_stage=3)


# --- smallest inputs ---------------------------------------------------------------------------

SMALL_PLAIN_FEATURES = (8, 16, 16, 32, 32, 32)


def _run_unchecked(model, x):
    """The encoder and decoder without the network's input check (what the original code does)."""
    return model.decoder(model.encoder(x))


@pytest.mark.parametrize("cls, features, stride, smallest", [
    (DualBranchUNet, TINY_FEATURES, (8, 16, 16), [(16, 16, 16), (8, 32, 16), (8, 16, 32)]),
    (PlainConvUNet, SMALL_PLAIN_FEATURES, (16, 32, 32), [(32, 32, 32), (16, 64, 32), (16, 32, 64)]),
])
def test_smallest_input_is_refused_up_front_and_the_suggestion_runs(cls, features, stride, smallest):
    """The total stride itself gives a one-voxel bottleneck, where InstanceNorm fails deep inside
    the network: the check refuses it with a size that does run, in training and in eval."""
    torch.manual_seed(4)
    model = cls(features_per_stage=features)
    assert model.total_stride == stride and model.min_input_sizes == smallest
    x = torch.randn(1, 1, *stride)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        _run_unchecked(model.eval(), x)  # proves the bound: the stride alone does not run
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with pytest.raises(InputSizeError, match="too small") as info:
            model(x)
        msg = str(info.value)
        assert all(str(s) in msg for s in smallest)
        assert f"pad it to e.g. {smallest[-1]}" in msg
    for size in smallest:
        model.train()
        y = model(torch.randn(2, 1, *size))
        y.float().mean().backward()
        assert y.shape == (2, 2, *size)
        with torch.no_grad():
            assert torch.isfinite(model.eval()(torch.randn(1, 1, *size))).all()


@pytest.mark.parametrize("size, suggestion", [((5, 10, 10), (8, 16, 32)), ((8, 16, 16), (8, 16, 32)),
                                              ((9, 16, 16), (16, 16, 16)), ((8, 30, 16), (8, 32, 16)),
                                              ((33, 64, 64), (40, 64, 64))])
def test_suggested_size_is_accepted(size, suggestion, tiny):
    assert tiny.suggest_input_size(size) == suggestion
    with pytest.raises(InputSizeError, match=re.escape(str(suggestion))):
        tiny(torch.zeros(1, 1, *size))
    with torch.no_grad():
        assert tiny(torch.zeros(1, 1, *suggestion)).shape == (1, 2, *suggestion)


def test_ignored_stride_counts_for_the_bottleneck_not_for_divisibility():
    """With equal consecutive features the released layer rule ignores a stride, so the bottleneck
    is larger than input / total stride and the total stride itself is already accepted."""
    model = SingleBranchUNet(features_per_stage=(8, 16, 16), strides=((1, 1, 1), (2, 2, 2), (2, 2, 2))).eval()
    assert model.total_stride == (4, 4, 4) and model.bottleneck_stride == (2, 2, 2)
    assert model.min_input_sizes == [(4, 4, 4)]
    with torch.no_grad():
        assert model(torch.randn(1, 1, 4, 4, 4)).shape == (1, 2, 4, 4, 4)


def test_input_size_error_is_a_fusionseg_error(tiny):
    from fusionseg_kernels.errors import FusionsegError

    with pytest.raises(FusionsegError):
        tiny(torch.zeros(1, 1, 8, 16, 16))


# --- one constructor -------------------------------------------------------------------------

def test_constructors_keep_their_keywords_and_defaults():
    import inspect

    names = ["input_channels", "num_classes", "features_per_stage", "strides", "kernel_sizes",
             "n_conv_per_stage", "n_conv_per_stage_decoder", "conv_bias", "norm_eps", "norm_affine",
             "negative_slope", "backend"]
    for cls in (DualBranchUNet, SingleBranchUNet, PlainConvUNet):
        params = inspect.signature(cls).parameters
        assert list(params)[:12] == names
    dual = inspect.signature(DualBranchUNet).parameters
    plain = inspect.signature(PlainConvUNet).parameters
    assert dual["features_per_stage"].default == (32, 64, 128, 256, 320)
    assert dual["conv_bias"].default is False and plain["conv_bias"].default is True
    assert plain["norm_affine"].default is True and plain["strides"].default[-2] == (2, 2, 2)
    # positional arguments still work, in the documented order
    model = DualBranchUNet(1, 3, TINY_FEATURES)
    assert model.num_classes == 3 and model.features_per_stage == TINY_FEATURES


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d], ids=["ncdhw", "ndhwc"])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_upsampling_matches_conv_transpose_then_cat(layout, bias):
    """The decoder's fused upsampling (the transposed conv's matmul written into the concatenation)
    against PyTorch's ConvTranspose3d then torch.cat, float64: the decoder's values in inference,
    and `upsample_into`'s gradients; where autograd records, the decoder takes PyTorch's path."""
    from fusionseg_kernels.models.blocks import UNetDecoder, transposed_conv_is_a_matmul, upsample_into

    torch.manual_seed(0)
    up = torch.nn.ConvTranspose3d(6, 3, (1, 2, 2), (1, 2, 2), bias=bias).double()
    assert transposed_conv_is_a_matmul(up)
    x = torch.randn(2, 6, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    skip = torch.randn(2, 4, 3, 8, 10, dtype=torch.float64).contiguous(memory_format=layout)
    decoder = UNetDecoder.__new__(UNetDecoder)
    torch.nn.Module.__init__(decoder)
    decoder.fused_upsampling = True
    expected = torch.cat((up(x), skip), dim=1)
    with torch.no_grad():
        got = decoder._upsample_and_cat(up, x, skip)
    assert got.is_contiguous(memory_format=layout)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    recorded = decoder._upsample_and_cat(up, x, skip)
    assert recorded.grad_fn is not None and "Cat" in type(recorded.grad_fn).__name__

    out = torch.empty_like(up(x))
    upsample_into(up, x, out)
    params = [x, up.weight] + ([up.bias] if bias else [])
    grad = torch.arange(out.numel(), dtype=torch.float64).view_as(out).sin()
    for g, r in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(up(x), params, grad)):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_the_first_layer_runs_on_onednn_in_inference_and_as_pytorch_in_training():
    """A 1-channel Conv3d (the networks' first layer), which PyTorch's CPU heuristic sends to
    slow_conv3d, runs through oneDNN on the fused path in inference (same values), and as
    nn.Conv3d where autograd records or with PyTorch's norms."""
    from torch.profiler import ProfilerActivity, profile

    from fusionseg_kernels.models.blocks import ConvNormAct

    torch.manual_seed(0)
    fused = ConvNormAct(torch.nn.Conv3d(1, 4, 3, padding=1), 4, 1e-5, True, 0.01, norm_backend="auto")
    plain = ConvNormAct(fused.conv, 4, 1e-5, True, 0.01, norm_backend="reference")
    plain.norm.load_state_dict(fused.norm.state_dict())
    x = torch.randn(1, 1, 6, 8, 10)

    def convs(layer, grad):
        with torch.set_grad_enabled(grad), profile(activities=[ProfilerActivity.CPU]) as prof:
            y = layer(x)
        return y, {e.name for e in prof.events() if "conv" in e.name}

    y, names = convs(fused, grad=False)
    assert "aten::mkldnn_convolution" in names and "aten::conv3d" not in names, names
    assert "aten::slow_conv3d_forward" not in names, names
    expected, names = convs(plain, grad=False)
    assert "aten::conv3d" in names, names
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    y, names = convs(fused, grad=True)
    assert "aten::conv3d" in names and y.grad_fn is not None, names
