"""The network rule end to end: every trainer this package ships is trained for one iteration by
nnU-Net on the CPU, once with nnU-Net's default plans and once with plans rewritten by
`fusionseg nnunet-plans` for its network; each model folder is then segmented by nnU-Net's
predictor and by `fusionseg predict --mode exact`, whose masks must be identical. A trainer given
plans for another network is refused before training, with the sentence `fusionseg predict`
gives for a model folder of that trainer and those plans.

nnU-Net runs in one subprocess (its paths are read when it is imported) through the functions
behind ``nnUNetv2_train`` and ``nnUNetv2_predict`` (`run_training`, `nnUNetPredictor`), without
nnU-Net's final validation of each run and without worker processes (each would import torch
again); the commands themselves are exercised by test_nnunet_integration.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2")
sitk = pytest.importorskip("SimpleITK")

from fusionseg_kernels.data import synth  # noqa: E402
from fusionseg_kernels.errors import ModelFolderError  # noqa: E402
from fusionseg_kernels.inference import PredictOptions, Predictor, create_model_folder  # noqa: E402
from fusionseg_kernels.nnunet import rewrite_plans  # noqa: E402
from fusionseg_kernels.nnunet.architecture import shipped_trainer_names, trainer_network  # noqa: E402
from tests.nnunet.support import BIN, nnunet_environment  # noqa: E402

DATASET, DATASET_ID = "Dataset902_Rule", 902
SPACING = (3.0, 4.0, 4.0)
TRAIN_SIZE = (16, 32, 32)
TEST_SIZE = (24, 40, 48)
FEATURES = {"dual": ["8", "16", "16", "32", "32"], "single": ["8", "16", "16", "32", "32"], "plain": None}
REFUSED = ("nnUNetTrainerFusionsegPlain", "dual")   # a trainer with plans for another network

# Runs in a fresh interpreter with nnU-Net's folders set: trains each job, predicts with each model
# folder, and writes what happened as JSON.
DRIVER = textwrap.dedent("""
    import json, os, sys
    import torch
    from nnunetv2.run.run_training import run_training
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    jobs, images, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    # nnU-Net's final validation (a pool of worker processes per run) is not what is tested here:
    # the held-out case below is predicted by nnU-Net's predictor from the checkpoint it saved
    nnUNetTrainer.perform_actual_validation = lambda self, *args, **kwargs: None
    report = {}
    for job in jobs:
        name = f"{job['trainer']}__{job['plans']}"
        try:
            run_training(str(job["dataset"]), "3d_fullres", 0, job["trainer"], job["plans"], device=torch.device("cpu"))
        except Exception as err:
            report[name] = {"trained": False, "error": f"{type(err).__name__}: {err}"}
            continue
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    device=torch.device("cpu"), verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(job["model"], use_folds=(0,))
        # the function behind nnUNetv2_predict, without its worker processes (which, unlike the
        # command, does not create its output folder)
        os.makedirs(f"{out}/{name}", exist_ok=True)
        predictor.predict_from_files_sequential(images, f"{out}/{name}", save_probabilities=False, overwrite=True)
        report[name] = {"trained": True, "network": type(predictor.network).__name__}
    print("REPORT " + json.dumps(report))
""")


def _jobs(results: Path) -> list[dict]:
    jobs = []
    for trainer in shipped_trainer_names():
        for plans in ("nnUNetPlans", f"nnUNetPlans_{trainer_network(trainer)}"):
            jobs.append({"trainer": trainer, "plans": plans, "dataset": DATASET_ID,
                         "model": str(results / DATASET / f"{trainer}__{plans}__3d_fullres")})
    trainer, network = REFUSED
    jobs.append({"trainer": trainer, "plans": f"nnUNetPlans_{network}", "dataset": DATASET_ID, "model": None})
    return jobs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("rule")
    raw, pre, res = root / "raw", root / "preprocessed", root / "results"
    env = dict(nnunet_environment(root), nnUNet_n_proc_DA="0")  # augmentation in the training process
    cases = synth.write_dataset(raw / DATASET, n=3, size=TRAIN_SIZE, spacing=SPACING, seed=1)
    images = root / "images"
    images.mkdir()
    synth.write_case(synth.synthesize_ct(TEST_SIZE, SPACING, seed=50), images / "heldout_0000.nii.gz")
    planner_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}  # nnU-Net's planner needs it unset
    plan = subprocess.run([BIN / "nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres",
                           "-np", "1", "-npfp", "1"], env=planner_env, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stdout[-2000:] + plan.stderr[-2000:]
    for network in ("dual", "single", "plain"):
        rewrite_plans(pre / DATASET, network=network, plans_name=f"nnUNetPlans_{network}", patch_size=(16, 32, 32),
                      features=FEATURES[network])
    # one validation case keeps nnU-Net's final validation short
    (pre / DATASET / "splits_final.json").write_text(json.dumps([{"train": cases[:2], "val": cases[2:]}]))
    jobs = _jobs(res)
    run = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(jobs), str(images), str(root / "nnunet")],
                         env=env, capture_output=True, text=True, timeout=1500)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("REPORT ")]
    assert run.returncode == 0 and lines, f"nnU-Net failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return dict(root=root, images=images, jobs=jobs, report=json.loads(lines[-1][len("REPORT "):]), pre=pre)


@pytest.mark.slow
@pytest.mark.parametrize("trainer", shipped_trainer_names())
@pytest.mark.parametrize("plans_kind", ["nnunet-default", "rewritten"])
def test_nnunet_and_fusionseg_predict_give_identical_masks(trained, trainer, plans_kind):
    plans = "nnUNetPlans" if plans_kind == "nnunet-default" else f"nnUNetPlans_{trainer_network(trainer)}"
    job = next(j for j in trained["jobs"] if j["trainer"] == trainer and j["plans"] == plans)
    name = f"{trainer}__{plans}"
    outcome = trained["report"][name]
    assert outcome["trained"], outcome
    predictor = Predictor(job["model"], PredictOptions(device="cpu", backend="cpu", mode="exact", quiet=True,
                                                       folds=["0"]))
    assert type(predictor.bundle.network).__name__ == outcome["network"]
    out = trained["root"] / "fusionseg" / name
    results = predictor.predict_paths(sorted(trained["images"].iterdir()), out)
    assert [r.status for r in results] == ["ok"]
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "heldout.nii.gz")))
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(trained["root"] / "nnunet" / name / "heldout.nii.gz")))
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs), \
        f"{int((ours != theirs).sum())} of {ours.size} voxels differ"


@pytest.mark.slow
def test_a_trainer_refuses_plans_for_another_network_as_predict_does(trained, tmp_path):
    trainer, network = REFUSED
    outcome = trained["report"][f"{trainer}__nnUNetPlans_{network}"]
    assert not outcome["trained"] and outcome["error"].startswith("PlansError: ")
    sentence = outcome["error"][len("PlansError: "):]
    plans = json.loads((trained["pre"] / DATASET / f"nnUNetPlans_{network}.json").read_text())
    from fusionseg_kernels.models import PlainConvUNet

    folder = create_model_folder(tmp_path / "model", PlainConvUNet(features_per_stage=[8, 16, 16, 32, 32, 32]),
                                 plans, trainer_name=trainer)
    with pytest.raises(ModelFolderError) as refused:
        Predictor(folder, PredictOptions(device="cpu", mode="exact", quiet=True))
    assert sentence in str(refused.value)
