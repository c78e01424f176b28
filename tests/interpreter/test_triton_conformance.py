"""The Triton backend on the shared conformance table, the shared edge cases and the shared table
of bad arguments, under the interpreter (own process: `TRITON_INTERPRET=1 pytest tests/interpreter`)."""
from __future__ import annotations

import pytest

from tests.ops.edge_cases import EDGE_CASES
from tests.ops.error_cases import BAD_ARGUMENTS
from fusionseg_kernels import inception_dwconv3d
from fusionseg_kernels.testing import CONFORMANCE_CASES, case_inputs, check_conformance

pytestmark = [pytest.mark.interpreter, pytest.mark.filterwarnings("error::RuntimeWarning")]


def triton_op(x, *args):
    return inception_dwconv3d(x, *args, backend="triton")


@pytest.mark.parametrize("case", [c for c in CONFORMANCE_CASES if c.small], ids=lambda c: c.id)
def test_matches_float64_reference(case):
    x, args, grad_y = case_inputs(case)
    failures = check_conformance(triton_op, x, args, grad_y)
    assert not failures, "; ".join(failures)


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_arguments_fail_as_on_the_other_backends(case):
    build, exc_type, words = BAD_ARGUMENTS[case]
    x, args = build()
    with pytest.raises(Exception) as triton_error:
        triton_op(x, *args)
    with pytest.raises(Exception) as reference_error:
        inception_dwconv3d(x, *args, backend="reference")
    assert triton_error.type is exc_type and words in str(triton_error.value)
    assert (triton_error.type, str(triton_error.value)) == (reference_error.type, str(reference_error.value))


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_case(case):
    EDGE_CASES[case](triton_op, "cpu")
