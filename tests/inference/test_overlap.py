"""Cases overlap in one process: the next case is read and the previous mask written while the
current one is segmented, one case ahead at most, and not at all when the two cases do not fit in
memory together; the first case is read before torch is imported; ``--num-parts/--part-id``
split a folder as nnU-Net does. The masks are those of one case at a time."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

from fusionseg_kernels.cli import main
from fusionseg_kernels.inference import PredictOptions, Predictor, reading
from fusionseg_kernels.inference import predict as predict_module
from tests.helpers import ROOT
from tests.inference.predict_support import ct_volume, leftovers, make_model_folder, write_volume


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("overlap")
    model = make_model_folder(root / "model")
    cases = root / "cases"
    for i in range(3):
        write_volume(cases / f"case{i}_0000.nii.gz", ct_volume((20, 40, 40), seed=i))
    return {"model": model, "cases": cases}


def _masks(folder):
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def test_the_next_case_is_read_while_the_current_one_is_segmented(setup, tmp_path, monkeypatch):
    predictor = Predictor(setup["model"], PredictOptions(device="cpu", backend="cpu", quiet=True))
    one_at_a_time = tmp_path / "sequential"
    for src in sorted(setup["cases"].iterdir()):
        predictor.predict_file(src, one_at_a_time / src.name.replace("_0000", ""))

    next_read = threading.Event()
    load = reading.load_case

    def recording_load(path, check):
        if path.name.startswith("case1"):
            next_read.set()
        return load(path, check)

    segment = Predictor.segment
    waited = []

    def segment_waiting_for_the_read(self, src, *args, **kwargs):
        out = segment(self, src, *args, **kwargs)
        if src.name.startswith("case0"):   # case 1's read runs while case 0 is still inside segment
            waited.append(next_read.wait(timeout=30))
        return out

    monkeypatch.setattr(reading, "load_case", recording_load)
    monkeypatch.setattr(Predictor, "segment", segment_waiting_for_the_read)
    results = predictor.predict_paths(sorted(setup["cases"].iterdir()), tmp_path / "overlapped")
    assert [r.status for r in results] == ["ok"] * 3 and waited == [True]
    overlapped, sequential = _masks(tmp_path / "overlapped"), _masks(one_at_a_time)
    assert overlapped.keys() == sequential.keys()
    assert all(np.array_equal(overlapped[name], sequential[name]) for name in sequential)
    for r in results:
        assert {"read", "waited_for_read", "preprocess", "network", "postprocess", "write", "total"} <= set(r.timings)
    assert leftovers(tmp_path / "overlapped") == []


def test_a_case_that_does_not_fit_beside_the_current_one_is_read_after_it(setup, tmp_path, monkeypatch):
    predictor = Predictor(setup["model"], PredictOptions(device="cpu", backend="cpu", quiet=True))
    need = predictor.memory_needed(reading.imageio.read_header(next(setup["cases"].iterdir())))
    monkeypatch.setattr(reading, "available_memory_bytes", lambda: int(1.5 * need))   # one case fits, not two
    events = []
    read_image = reading.imageio.read_image

    def recording_read(header):
        events.append(("read", header.path.name[:5], time.perf_counter()))
        return read_image(header)

    segment = Predictor.segment

    def recording_segment(self, src, *args, **kwargs):
        out = segment(self, src, *args, **kwargs)
        time.sleep(0.2)   # room for a read that should not start yet
        events.append(("segmented", src.name[:5], time.perf_counter()))
        return out

    read_header = reading.imageio.read_header

    def slow_first_header(path):   # case 1's read reaches its check before case 0's header is known
        if path.name.startswith("case0"):
            time.sleep(0.3)
        return read_header(path)

    monkeypatch.setattr(reading.imageio, "read_header", slow_first_header)
    monkeypatch.setattr(reading.imageio, "read_image", recording_read)
    monkeypatch.setattr(Predictor, "segment", recording_segment)
    results = predictor.predict_paths(sorted(setup["cases"].iterdir()), tmp_path / "out")
    assert [r.status for r in results] == ["ok"] * 3
    when = {(kind, case): t for kind, case, t in events}
    assert when[("read", "case1")] > when[("segmented", "case0")]
    assert when[("read", "case2")] > when[("segmented", "case1")]


def test_a_failed_write_fails_its_case_and_the_others_go_on(setup, tmp_path, monkeypatch):
    predictor = Predictor(setup["model"], PredictOptions(device="cpu", backend="cpu", quiet=True))
    write_mask = predict_module.io.write_mask

    def failing_for_case1(mask, reference, path, **kwargs):
        if path.name.startswith("case1"):
            raise predict_module.io.OutputFolderError(f"cannot write {path}: No space left on device")
        return write_mask(mask, reference, path, **kwargs)

    monkeypatch.setattr(predict_module.io, "write_mask", failing_for_case1)
    lines = []
    results = predictor.predict_paths(sorted(setup["cases"].iterdir()), tmp_path / "out", report=lines.append)
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert "No space left" in results[1].error and any("case1" in ln for ln in lines)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case0.nii.gz", "case2.nii.gz"]


def test_start_reading_does_not_import_torch(setup):
    src = next(setup["cases"].iterdir())
    code = ("import sys; from fusionseg_kernels.inference.reading import start_reading; "
            f"case = start_reading({str(src)!r}).result(); "
            "print(case.voxels.shape, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(20,", "40,", "40)", "False"]


def test_parts_split_the_cases_as_nnunet_does(setup, tmp_path):
    timings = tmp_path / "t.json"
    for part in (0, 1):
        assert main(["predict", "-i", str(setup["cases"]), "-o", str(tmp_path / "out"), "-m", str(setup["model"]),
                     "--device", "cpu", "--quiet", "--num-parts", "2", "--part-id", str(part),
                     "--timings", str(timings)]) == 0
        cases = [c["case"] for c in json.loads(timings.read_text())["cases"]]
        assert cases == (["case0", "case2"] if part == 0 else ["case1"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]
    process = json.loads(timings.read_text())["process"]
    assert process["command_started"] <= process["torch_imported"] <= process["model_loaded"] <= process["cases_done"]


def test_a_part_id_outside_the_parts_is_refused(setup, tmp_path, capsys):
    assert main(["predict", "-i", str(setup["cases"]), "-o", str(tmp_path / "out"), "-m", str(setup["model"]),
                 "--device", "cpu", "--quiet", "--num-parts", "2", "--part-id", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fusionseg predict: error: --part-id 2 is not one of the 2 parts: it counts from 0 to 1."]
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
