"""`fusionseg nnunet-plans`: an nnU-Net plans file rewritten so that 3d_fullres builds one of this
package's networks, checked by building it the way nnU-Net does."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

from fusionseg_kernels.cli import main
from fusionseg_kernels.errors import FusionsegError
from fusionseg_kernels.models import DualBranchUNet, PlainConvUNet, SingleBranchUNet
from fusionseg_kernels.nnunet import PlansError, rewrite_plans
from tests.nnunet.support import PLANS, write_dataset_folder

def nnunet_network(plans_file, configuration="3d_fullres", deep_supervision=False):
    """The network nnU-Net's own code builds from a plans file."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(str(plans_file)).get_configuration(configuration)
    return get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, 1, 2, deep_supervision=deep_supervision)


def test_rewrite_released_network(tmp_path):
    folder = write_dataset_folder(tmp_path / "Dataset901_Tiny")
    source_before = (folder / "nnUNetPlans.json").read_text()
    out = rewrite_plans(folder)
    assert out == folder / "nnUNetPlans_fusionseg.json"
    assert (folder / "nnUNetPlans.json").read_text() == source_before  # source untouched
    written = sorted(p.name for p in folder.iterdir())
    assert written == ["dataset.json", "nnUNetPlans.json", "nnUNetPlans_fusionseg.json"]
    plans = json.loads(out.read_text())
    assert plans["plans_name"] == "nnUNetPlans_fusionseg"
    config = plans["configurations"]["3d_fullres"]
    assert config["data_identifier"] == "nnUNetPlans_3d_fullres"  # preprocessed data reused
    assert config["architecture"]["network_class_name"] == "fusionseg_kernels.models.DualBranchUNet"
    model = nnunet_network(out)
    assert type(model) is DualBranchUNet
    assert sum(p.numel() for p in model.parameters()) == 8_227_320
    assert model.config == DualBranchUNet().config
    assert not model.deep_supervision
    # everything but the plans name and that architecture is copied
    expected = copy.deepcopy(PLANS)
    expected["plans_name"] = "nnUNetPlans_fusionseg"
    expected["configurations"]["3d_fullres"]["architecture"] = config["architecture"]
    assert plans == expected


def test_rewrite_with_patch_features_batch_and_other_networks(tmp_path):
    folder = write_dataset_folder(tmp_path / "D")
    out = rewrite_plans(folder / "nnUNetPlans.json", network="single", plans_name="P_single",
                        patch_size=(16, 32, 32), features=(16, 32, 32, 64, 64), batch_size=3)
    config = json.loads(out.read_text())["configurations"]["3d_fullres"]
    assert config["patch_size"] == [16, 32, 32] and config["batch_size"] == 3
    model = nnunet_network(out, deep_supervision=True)
    assert type(model) is SingleBranchUNet and model.features_per_stage == (16, 32, 32, 64, 64)
    assert model.deep_supervision
    # the plain network keeps what nnU-Net planned for the dataset (4 stages here)
    out = rewrite_plans(folder, network="plain", plans_name="P_plain")
    model = nnunet_network(out)
    assert type(model) is PlainConvUNet and model.features_per_stage == (32, 64, 128, 256)
    assert model.config["conv_bias"] and model.config["norm_affine"]


def test_dataset_id_is_looked_up_in_nnunet_preprocessed(tmp_path, monkeypatch):
    write_dataset_folder(tmp_path / "Dataset901_Tiny")
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    assert rewrite_plans("901") == tmp_path / "Dataset901_Tiny" / "nnUNetPlans_fusionseg.json"
    assert rewrite_plans("Dataset901_Tiny", plans_name="X").name == "X.json"


@pytest.mark.parametrize("kwargs, match", [
    ({"patch_size": (16, 32, 30)}, r"--patch 16 32 32"),
    ({"patch_size": (8, 16, 16)}, r"--patch 8 16 32"),
    ({"features": (16, 32)}, "one per stage"),
    ({"features": (15, 32, 32, 64, 64)}, "even"),
    ({"plans_name": "nnUNetPlans"}, "differ"),
    ({"configuration": "2d"}, "no configuration"),
    ({"network": "triple"}, "unknown network"),
])
def test_rewrite_refuses_what_would_not_train(tmp_path, kwargs, match):
    folder = write_dataset_folder(tmp_path / "D")
    with pytest.raises(FusionsegError, match=match):
        rewrite_plans(folder, **kwargs)
    assert not (folder / "nnUNetPlans_fusionseg.json").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "nnUNetPlans.json"]  # no temporary left


def test_rewrite_errors_for_missing_files(tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    with pytest.raises(PlansError, match="does not exist"):
        rewrite_plans(tmp_path)
    with pytest.raises(PlansError, match="nnUNet_preprocessed is not set"):
        rewrite_plans("Dataset123_None")
    (tmp_path / "nnUNetPlans.json").write_text("{not json")
    with pytest.raises(PlansError, match="not valid JSON"):
        rewrite_plans(tmp_path)


def test_cli_nnunet_plans(tmp_path, capsys):
    folder = write_dataset_folder(tmp_path / "D")
    features = ["--features", "16", "32", "32", "64", "64"]
    assert main(["nnunet-plans", str(folder), "--patch", "16", "32", "32", *features]) == 0
    assert "nnUNetPlans_fusionseg.json" in capsys.readouterr().out
    assert main(["nnunet-plans", str(folder), "--patch", "16", "32", "30"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fusionseg nnunet-plans: error: patch size") and "\n" not in err


def test_cli_nnunet_env_makes_nnunet_find_the_trainer():
    """`eval "$(fusionseg nnunet-env)"` in a shell, then nnU-Net's own lookup in that shell."""
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    script = ('eval "$(fusionseg nnunet-env)" && echo "$nnUNet_extTrainer" && python -c "'
              'from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; '
              'c = f(\'nnUNetTrainernew\'); print(c.__module__, c.__name__)"')
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].endswith(os.path.join("fusionseg_kernels", "nnunet", "ext_trainers"))
    assert lines[-1] == "fusionseg_kernels.nnunet.trainers nnUNetTrainernew"
