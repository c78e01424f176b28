"""Python-side registrations of the C++ op pair fusionseg::inception_dwconv3d_{forward,backward}.

The schemas and the CPU/CUDA kernels are defined in C++ (csrc/ops); fake kernels, autograd, FLOP
formulas and the autocast rule come from `registration.register_op_pair`, as for the Triton pair.
"""
from __future__ import annotations

from ..._extension import extension_available
from .registration import register_op_pair

REGISTERED = False


def _register() -> None:
    global REGISTERED
    if REGISTERED or not extension_available():
        return
    register_op_pair("inception_dwconv3d_forward", "inception_dwconv3d_backward")
    REGISTERED = True


_register()
