"""One rule for "which network does this model folder hold": `fusionseg predict` (through
`load_model_folder`) and nnU-Net's predictor and trainer (through the trainers'
`build_network_architecture`) must build the same network for every shipped trainer and every
kind of plans, or refuse it with the same sentence. The end-to-end form (each trainer trained
for one iteration, then both predictors) is in test_nnunet_network_rule_end_to_end.py."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.nnunet.support import PLANS, write_dataset_folder

from fusionseg_kernels.errors import ModelFolderError, PlansError
from fusionseg_kernels.inference import create_model_folder, load_model_folder
from fusionseg_kernels.nnunet import rewrite_plans
from fusionseg_kernels.nnunet.architecture import (network_spec, released_arch_kwargs, shipped_trainer_names,
                                                   trainer_network)

nnunetv2 = pytest.importorskip("nnunetv2")
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402

from fusionseg_kernels.nnunet import trainers  # noqa: E402

TRAINERS = shipped_trainer_names()
TINY = {"dual": [16, 32, 32, 64, 64], "single": [16, 32, 32, 64, 64], "plain": None}


@pytest.fixture(scope="module")
def plans_variants(tmp_path_factory):
    """nnU-Net's default plans (nnU-Net's PlainConvUNet) and plans rewritten by fusionseg
    nnunet-plans for each of the three networks."""
    variants = {"nnunet-default": copy.deepcopy(PLANS)}
    for network in ("dual", "single", "plain"):
        folder = write_dataset_folder(tmp_path_factory.mktemp(network) / "Dataset901_Tiny")
        path = rewrite_plans(folder, network=network, patch_size=(16, 32, 32), features=TINY[network])
        variants[network] = json.loads(path.read_text())
    return variants


def _nnunet_builds(trainer_name, plans):
    pm = PlansManager(copy.deepcopy(plans))
    cls = getattr(trainers, trainer_name)
    return cls.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 2,
                                          enable_deep_supervision=False)


def _shapes(net):
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("plans_kind", ["nnunet-default", "dual", "single", "plain"])
@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_predict_and_nnunet_build_one_network_or_refuse_alike(trainer_name, plans_kind, plans_variants,
                                                              tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONSEG_BACKEND", "reference")
    plans = plans_variants[plans_kind]
    try:
        theirs = _nnunet_builds(trainer_name, plans)
    except PlansError as err:
        theirs = err
    # a model folder whose checkpoint this trainer could have written (weights of the network nnU-Net
    # builds, or of the trainer's own network when nnU-Net refuses the plans)
    if isinstance(theirs, PlansError):
        from fusionseg_kernels.models import NETWORKS

        network = trainer_network(trainer_name)
        weights_net = NETWORKS[network](features_per_stage=[8, 16, 16, 32, 32] + [32] * (network == "plain"))
    else:
        weights_net = theirs
    folder = create_model_folder(tmp_path / "model", weights_net, plans, trainer_name=trainer_name)
    try:
        ours = load_model_folder(folder, backend="reference").network
    except ModelFolderError as err:
        ours = err
    if isinstance(theirs, PlansError):
        assert isinstance(ours, ModelFolderError), f"nnU-Net refuses ({theirs}) but fusionseg builds {ours!r}"
        assert str(theirs) in str(ours)           # the same sentence, after the file name
        assert "plans.json" in str(ours)
        return
    assert not isinstance(ours, Exception), f"nnU-Net builds {type(theirs).__name__} but fusionseg refuses: {ours}"
    assert type(ours) is type(theirs)
    assert _shapes(ours) == _shapes(theirs)
    # the checkpoint nnU-Net's network wrote loads into fusionseg's with every tensor equal
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))


def test_the_rule_for_default_plans_follows_the_trainer():
    config = PLANS["configurations"]["3d_fullres"]
    assert network_spec("nnUNetTrainernew_bf16", config).network == "dual"
    assert network_spec("nnUNetTrainerFusionsegSingle", config).network == "single"
    assert network_spec("nnUNetTrainerFusionsegPlain_bf16", config).network == "plain"
    assert network_spec("nnUNetTrainer", config).network == "plain"   # nnU-Net's own trainer
    # the released trainer ignores the plans' sizes, as the released trainer's code did
    assert network_spec("nnUNetTrainernew", config).kwargs == {}


def test_plans_naming_another_network_are_refused_for_unknown_trainers():
    config = copy.deepcopy(PLANS["configurations"]["3d_fullres"])
    config["architecture"]["network_class_name"] = \
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    with pytest.raises(PlansError, match="ResidualEncoderUNet, which trainer nnUNetTrainer would build"):
        network_spec("nnUNetTrainer", config)
    # the dual-branch trainer builds its released network whatever nnU-Net network the plans name
    assert network_spec("nnUNetTrainernew", config).network == "dual"


@pytest.mark.parametrize("broken, message", [
    ({"architecture": None}, "no 'architecture' object"),
    ({"architecture": {"arch_kwargs": {}}}, "no network_class_name"),
    ({"architecture": {"network_class_name": "fusionseg_kernels.models.DualBranchUNet", "arch_kwargs": [1]}},
     "no 'arch_kwargs' object"),
])
def test_malformed_architecture_is_one_sentence(broken, message):
    config = dict(copy.deepcopy(PLANS["configurations"]["3d_fullres"]), **broken)
    with pytest.raises(PlansError, match=message):
        network_spec("nnUNetTrainernew", config)


def test_released_arch_kwargs_are_the_networks_defaults():
    from fusionseg_kernels.models import DualBranchUNet, PlainConvUNet

    for network, cls in (("dual", DualBranchUNet), ("plain", PlainConvUNet)):
        built = cls.from_plans(released_arch_kwargs(network), 1, 2, backend="reference")
        assert built.config == cls().config
