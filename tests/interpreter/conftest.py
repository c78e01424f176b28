"""The Triton interpreter suite: run it in its own process, `TRITON_INTERPRET=1 pytest tests/interpreter`.

Triton reads TRITON_INTERPRET when the kernels are decorated (at import), so it cannot be
switched on inside a process that imported fusionseg_kernels' Triton backend without it.
"""
import os

import pytest
import torch

INTERPRETER_ON = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    if INTERPRETER_ON:
        return
    skip = pytest.mark.skip(reason="needs TRITON_INTERPRET=1 in the environment of its own pytest "
                                   "process: `TRITON_INTERPRET=1 pytest tests/interpreter`")
    for item in items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """y and grad_x of the Triton backend start as NaN, so an element no program writes fails
    the comparison with the reference."""
    from fusionseg_kernels.ops.inception_dwconv3d import triton_impl

    monkeypatch.setattr(triton_impl, "_empty_like", lambda t: torch.full_like(t, float("nan")))
