"""The drop-in module: released state-dict layout, variants, backends."""
import pytest
import torch

import fusionseg_kernels as fk
from tests.helpers import make_input, rel_l2

RELEASED_KEYS = {
    "dwconv_hwd.weight": (4, 1, 3, 3, 3), "dwconv_hwd.bias": (4,),
    "dwconv_wd.weight": (4, 1, 1, 1, 11), "dwconv_wd.bias": (4,),
    "dwconv_hd.weight": (4, 1, 1, 11, 1), "dwconv_hd.bias": (4,),
    "dwconv_hw.weight": (4, 1, 11, 1, 1), "dwconv_hw.bias": (4,),
}


def test_state_dict_matches_released_module():
    m = fk.InceptionDWConv3d(32)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == RELEASED_KEYS


def test_plane_variant_shapes():
    m = fk.InceptionDWConv3d(32, band_shape="plane")
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items() if k.endswith("weight")}
    assert shapes == {"dwconv_hwd.weight": (4, 1, 3, 3, 3), "dwconv_wd.weight": (4, 1, 1, 11, 11),
                      "dwconv_hd.weight": (4, 1, 11, 1, 11), "dwconv_hw.weight": (4, 1, 11, 11, 1)}


def test_released_weights_load_and_all_backends_agree():
    released = {k: torch.randn(s, dtype=torch.float64) for k, s in RELEASED_KEYS.items()}
    m = fk.InceptionDWConv3d(32).double()
    m.load_state_dict(released)
    x = make_input((1, 32, 6, 7, 8))
    m.backend = "reference"
    ref = m(x)
    for backend in ("cpu", "auto"):
        m.backend = backend
        assert rel_l2(m(x), ref) < 1e-12
    # identity channels pass unchanged
    assert torch.equal(ref[:, :16], x[:, :16])


def test_small_channel_count_is_identity():
    m = fk.InceptionDWConv3d(7)
    assert m.gc == 0
    x = make_input((2, 7, 3, 4, 5), dtype=torch.float32)
    assert torch.equal(m(x), x)


def test_reset_parameters_changes_weights_like_conv3d_init():
    torch.manual_seed(0)
    m = fk.InceptionDWConv3d(64)
    before = m.dwconv_hwd.weight.detach().clone()
    m.reset_parameters()
    assert not torch.equal(before, m.dwconv_hwd.weight)
    bound = 1.0 / 27 ** 0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 27
    assert m.dwconv_hwd.weight.abs().max() <= bound + 1e-7


def test_backend_can_change_and_repr_says_it():
    m = fk.InceptionDWConv3d(16, backend="reference")
    m.backend = "cpu"
    assert "backend='cpu'" in repr(m)
    with pytest.raises(ValueError):
        m.backend = "nope"


def test_module_gradients_flow_to_parameters():
    m = fk.InceptionDWConv3d(16, backend="cpu")
    x = make_input((1, 16, 4, 5, 6), dtype=torch.float32, requires_grad=True)
    m(x).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_explain_backend_on_cpu():
    backend, reason = fk.explain_backend(make_input((1, 16, 2, 2, 2)))
    assert backend == "cpu" and "CPU" in reason
