"""Parameter and MAC counts per 96×128×128 patch (published figures), and the `fusionseg complexity` command."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import fusionseg_kernels
from fusionseg_kernels import cli
from fusionseg_kernels.models import complexity

# measured on the original code (torch.utils.flop_counter, MACs = FLOPs / 2)
EXPECTED = {"dual": (8_227_320, 184.5, 28), "single": (8_757_032, 192.2, 9), "plain": (30_785_994, 358.2, 0)}


@pytest.fixture(scope="module")
def rows():
    return {r["network"]: r for r in complexity.report()}


@pytest.mark.parametrize("network", ["dual", "single", "plain"])
def test_counts_match_original(rows, network):
    params, gmacs, idc = EXPECTED[network]
    for counter in ("fused", "reference"):
        c = rows[network][counter]
        assert c["total_params"] == params
        assert round(c["total_macs"] / 1e9, 1) == gmacs
        assert c["idc_calls"] == idc
    assert rows[network]["fused"]["macs"] == rows[network]["reference"]["macs"]


def test_dual_total_flops_exact(rows):
    # the original code: 368.97 GFLOP with torch.utils.flop_counter
    assert round(2 * rows["dual"]["fused"]["total_macs"] / 1e9, 2) == 368.97


def test_fused_counter_counts_the_fused_op(rows):
    """The fused count goes through fusionseg.inception_dwconv3d_forward's FLOP formula, the
    reference count through aten.convolution only, and both give the same InceptionDWConv3d MACs."""
    fused_ops, ref_ops = rows["dual"]["fused"]["ops"], rows["dual"]["reference"]["ops"]
    assert set(fused_ops) == {"aten.convolution", "fusionseg.inception_dwconv3d_forward"}
    assert set(ref_ops) == {"aten.convolution"}
    idc_macs = rows["dual"]["fused"]["macs"]["InceptionDWConv3d"]
    assert fused_ops["fusionseg.inception_dwconv3d_forward"] == idc_macs > 0
    assert ref_ops["aten.convolution"] - fused_ops["aten.convolution"] == idc_macs
    # 60 multiply-adds per conv-group voxel (docs/op.md), 28 calls (tests/data/idc_layer_shapes.json)
    from tests.helpers import DATA_DIR

    calls = json.loads((DATA_DIR / "idc_layer_shapes.json").read_text())["dual_branch"]
    assert idc_macs == sum(60 * c["split"][1] * c["shape_ncdhw"][2] * c["shape_ncdhw"][3] * c["shape_ncdhw"][4]
                           for c in calls)


def test_categories_sum_and_heads(rows):
    dual = rows["dual"]["fused"]
    assert dual["params"]["segmentation heads"] == (256 + 128 + 64 + 32) * 2 + 4 * 2
    assert dual["macs"]["segmentation heads"] == 32 * 2 * 96 * 128 * 128  # only the last head runs
    assert dual["params"]["InstanceNorm affine"] == 0
    assert rows["plain"]["fused"]["params"]["InceptionDWConv3d"] == 0


def test_cli_json(capsys):
    assert cli.main(["complexity", "--networks", "single", "--patch", "16", "32", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["network"] for r in out] == ["single"]
    assert out[0]["fused"]["patch"] == [16, 32, 32]
    assert out[0]["fused"]["total_macs"] * 96 * 128 * 128 // (16 * 32 * 32) == pytest.approx(192.2e9, rel=2e-3)


def test_table_has_breakdown_and_paper_values(rows):
    table = complexity.format_table(list(rows.values()))
    assert "| dual | **total** | **8,227,320** | **184.485** |" in table
    assert "| dual | InceptionDWConv3d | 20,608 |" in table
    assert "| plain | 30,785,994 | 30,785,994 | — | 358.19 | 358.2 | 416.78 | 0 |" in table
    assert "186.75" in table  # the paper's printed value beside it


def test_cli_runs_as_module():
    proc = subprocess.run([sys.executable, "-m", "fusionseg_kernels.cli", "complexity", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--networks" in proc.stdout


def test_cli_without_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "complexity" in capsys.readouterr().out


@pytest.mark.parametrize("patch, words", [
    (["95", "128", "128"], "not divisible by the network's total stride"),
    (["0", "0", "0"], "is not positive"),
    (["-8", "16", "16"], "is not positive"),
    (["8", "16", "16"], "too small"),
    (["8", "x", "16"], "is not an integer"),
])
def test_cli_bad_patch_is_one_sentence_and_exit_2(patch, words):
    proc = subprocess.run([sys.executable, "-m", "fusionseg_kernels.cli", "complexity", "--networks", "dual",
                           "--patch", *patch], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and words in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("fusionseg complexity: error:")


def test_cli_labels_follow_the_patch_and_networks_are_counted_once(capsys):
    assert cli.main(["complexity", "--networks", "dual", "dual", "--patch", "16", "32", "32"]) == 0
    out = capsys.readouterr().out
    assert "per 16×32×32 patch" in out and "96×128×128 patch at batch 1" not in out
    assert out.count("| dual | **total** |") == 1
    assert "184.5" not in out and "186.75" not in out  # the default patch's figures are not set beside it


def test_cli_version():
    proc = subprocess.run([sys.executable, "-m", "fusionseg_kernels.cli", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"fusionseg {fusionseg_kernels.__version__}"
