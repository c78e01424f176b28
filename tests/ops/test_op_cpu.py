"""The fused CPU kernel against the float64 reference: forward and every gradient."""
import os
import subprocess
import sys

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusionseg_kernels as fk
from tests.helpers import (ROOT, PLANE_KERNELS, STRIP_KERNELS, assert_matches_reference, make_input, make_op_args)


def cpu_op(x, *args):
    return fk.inception_dwconv3d(x, *args, backend="cpu")


def test_gradcheck_float64():
    x = make_input((1, 9, 3, 4, 5), requires_grad=True)
    args = make_op_args(9, 1, kernels=((3, 3, 3), (1, 1, 3), (1, 3, 1), (3, 1, 1)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *a: cpu_op(x, *a), (x, *args))


def test_deterministic_across_runs_and_thread_counts():
    x = make_input((2, 32, 8, 9, 10), dtype=torch.float32, requires_grad=True)
    args = make_op_args(32, 4, dtype=torch.float32, requires_grad=True)
    grad_y = make_input(x.shape, dtype=torch.float32, seed=3)

    def run(threads):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            y = cpu_op(x, *args)
            return [y] + list(torch.autograd.grad(y, [x] + args, grad_y))
        finally:
            torch.set_num_threads(old)

    first, again, single = run(2), run(2), run(1)
    for a, b, c in zip(first, again, single):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


def test_poisoned_outputs_are_fully_written():
    # FUSIONSEG_POISON_OUTPUTS=1 makes the kernel NaN-fill outputs before writing them; it is read
    # once per process, hence the subprocess.
    code = (
        "import torch\n"
        "import fusionseg_kernels as fk\n"
        "from tests.helpers import make_input, make_op_args, assert_matches_reference, PLANE_KERNELS, STRIP_KERNELS\n"
        "for shape, gc, k in [((2, 16, 7, 9, 13), 2, None), ((1, 20, 5, 3, 40), 5, PLANE_KERNELS)]:\n"
        "    x = make_input(shape, dtype=torch.float32)\n"
        "    args = make_op_args(shape[1], gc, k or STRIP_KERNELS, dtype=torch.float32)\n"
        "    assert_matches_reference(lambda *a: fk.inception_dwconv3d(*a, backend='cpu'), x, args)\n"
        "print('poison-ok')\n"
    )
    env = dict(os.environ, FUSIONSEG_POISON_OUTPUTS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "poison-ok" in out.stdout


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 2),
    gc=st.integers(0, 6),
    extra=st.integers(0, 5),
    d=st.integers(1, 9),
    h=st.integers(1, 12),
    w=st.integers(1, 40),
    plane=st.booleans(),
    bias=st.booleans(),
)
def test_matches_reference_hypothesis(n, gc, extra, d, h, w, plane, bias):
    C = 4 * gc + extra
    if C == 0:
        C = 1
    x = make_input((n, C, d, h, w), dtype=torch.float64)
    args = make_op_args(C, gc, PLANE_KERNELS if plane else STRIP_KERNELS, bias=bias)
    if n == 0:
        assert cpu_op(x, *args).shape == x.shape
        return
    assert_matches_reference(cpu_op, x, args)


def test_large_output_takes_the_streaming_store_path():
    # Outputs >= 32 MB with 32-byte rows are written with non-temporal stores (a separate code
    # path): 1 x 16 x 40 x 128 x 128 float32 = 42 MB. The kernel counts the passes that chose it
    # (forward, and dx in the backward), so the test knows that path ran.
    passes = torch.ops.fusionseg.cpu_streaming_store_passes
    x = make_input((1, 16, 40, 128, 128), dtype=torch.float32)
    before = passes()
    assert_matches_reference(cpu_op, x, make_op_args(16, 2, dtype=torch.float32))
    ran = passes() - before
    assert ran >= 2, f"the streaming-store path ran {ran} times (forward and backward expected)"
    before = passes()
    cpu_op(make_input((1, 16, 4, 8, 8), dtype=torch.float32), *make_op_args(16, 2, dtype=torch.float32))
    assert passes() == before, "a small output must not take the streaming path"
