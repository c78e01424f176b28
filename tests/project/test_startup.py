"""Start-up: the command line answers --help and --version without importing torch, and importing
the package (even using the op and the networks) loads nothing heavy it does not need —
torch._dynamo, triton, nnunetv2, scipy and matplotlib load when first used."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fusionseg_kernels.cli import command_names

HEAVY = ("torch", "torch._dynamo", "triton", "nnunetv2", "scipy", "matplotlib", "SimpleITK")


def loaded_after(code: str) -> list[str]:
    probe = code + f"\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_package_loads_nothing_heavy():
    assert loaded_after("import fusionseg_kernels") == []


@pytest.mark.parametrize("argv", [["--version"], ["--help"]] + [[name, "--help"] for name in command_names()])
def test_the_command_line_answers_help_and_version_without_torch(argv):
    code = ("from fusionseg_kernels.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code")
    assert loaded_after(code) == []


def test_the_op_and_a_network_forward_load_torch_only():
    code = ("import torch, fusionseg_kernels as fk\n"
            "from fusionseg_kernels.models import DualBranchUNet\n"
            "net = DualBranchUNet(features_per_stage=(8, 16, 16, 32, 32)).eval()\n"
            "with torch.no_grad():\n    net(torch.zeros(1, 1, 16, 32, 32))\n"
            "layer = fk.InceptionDWConv3d(16)\nlayer(torch.zeros(1, 16, 4, 5, 6))\n")
    assert loaded_after(code) == ["torch"]
