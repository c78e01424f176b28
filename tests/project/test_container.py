"""The FLARE submission container: its Dockerfile passes hadolint, installs the versions this
project is tested with and leaves CUDA_VISIBLE_DEVICES alone; its predict.sh, run the way FLARE
runs it (one process per case, one ``<case>_0000.nii.gz`` in the input folder) under
``fusionseg profile --per-case``, writes ``<case>.nii.gz`` for every case."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from tests.helpers import ROOT
from tests.inference.predict_support import ct_volume, make_model_folder, write_volume

DOCKERFILE = ROOT / "container" / "Dockerfile"
PREDICT_SH = ROOT / "container" / "predict.sh"
BIN = Path(sys.executable).parent


def test_dockerfile_passes_hadolint():
    out = subprocess.run([str(BIN / "hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_pins_the_tested_versions_and_leaves_the_gpu_choice_to_flare():
    text = DOCKERFILE.read_text()
    pins = dict(re.findall(r"([A-Za-z][\w.-]*)==([\w.]+)", text))
    assert {"SimpleITK", "isal", "scipy", "tqdm", "psutil", "nvidia-ml-py"} <= set(pins)
    for name, version in pins.items():
        assert metadata.version(name) == version, f"the image installs {name}=={version}, tests run {name}"
    assert "CUDA_VISIBLE_DEVICES=" not in text and "/workspace/predict.sh" in text
    assert 'CMD ["/bin/bash", "-c", "sh predict.sh"]' in text


def test_predict_sh_under_the_per_case_protocol(tmp_path):
    model = make_model_folder(tmp_path / "model")
    inputs = tmp_path / "inputs"
    for i in range(2):
        write_volume(inputs / f"FLARE_{i:03d}_0000.nii.gz", ct_volume((20, 40, 40), seed=i))
    outputs = tmp_path / "outputs"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", FUSIONSEG_MODEL=str(model))
    run = subprocess.run([str(BIN / "fusionseg"), "profile", "--per-case", "-i", str(inputs), "-o", str(outputs),
                          "--source", "rss", "--", "env", "FUSIONSEG_INPUTS={input}", "FUSIONSEG_OUTPUTS={output}",
                          "sh", str(PREDICT_SH), "--device", "cpu"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in outputs.glob("*.nii.gz")) == ["FLARE_000.nii.gz", "FLARE_001.nii.gz"]
    profile = json.loads((outputs / "profile.json").read_text())
    assert [c["case"] for c in profile["cases"]] == ["FLARE_000", "FLARE_001"]
    assert all(c["exit_status"] == 0 and c["output_written"] and c["time_s"] > 0 for c in profile["cases"])
