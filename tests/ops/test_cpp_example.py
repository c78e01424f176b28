"""The C++ path: a libtorch program linked against the operator library calls the op."""
import subprocess
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "build" / "cmake" / "fusionseg_example"


@pytest.mark.skipif(not EXAMPLE.exists(), reason="the CMake build folder build/cmake has no "
                    "fusionseg_example (installed from a wheel, or built with FUSIONSEG_BUILD_EXAMPLES=OFF)")
def test_cpp_example_runs_and_matches_conv3d():
    out = subprocess.run([str(EXAMPLE)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("ok max_abs_err=")
