"""fusionseg predict on bad input: one line per failing case naming it, the other cases still
segmented, a non-zero exit status, nothing half-written."""
from __future__ import annotations

import _thread
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from fusionseg_kernels.cli import main
from fusionseg_kernels.errors import CheckpointError, InputImageError, ModelFolderError
from fusionseg_kernels.inference import PredictOptions, Predictor, create_model_folder, load_model_folder
from fusionseg_kernels.imageio import read_header
from tests.inference.predict_support import (ct_volume, leftovers, make_model_folder, tiny_network, tiny_plans,
                                  write_volume)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("model_err"))


def run(capsys, *args) -> tuple[int, list[str]]:
    rc = main(["predict", *map(str, args), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    return rc, [ln for ln in err.splitlines() if ln.strip()]


def huge_header(path: Path) -> Path:
    """An .mha whose header declares 4000^3 int16 voxels (128 GB) but holds only a few bytes."""
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                     b"DimSize = 4000 4000 4000\nElementSpacing = 1 1 1\nElementType = MET_SHORT\n"
                     b"ElementDataFile = LOCAL\n" + b"\0" * 64)
    return path


def test_bad_cases_are_reported_and_skipped(model, tmp_path, capsys):
    inp = tmp_path / "in"
    good = write_volume(inp / "good_0000.nii.gz", ct_volume((16, 32, 32), seed=1))
    (inp / "corrupt_0000.nii.gz").write_bytes(np.random.default_rng(0).bytes(5000))
    data = good.read_bytes()
    (inp / "truncated_0000.nii.gz").write_bytes(data[: len(data) // 2])
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.int16)), str(inp / "flat_0000.nii.gz"))
    four_d = sitk.GetImageFromArray(np.zeros((2, 8, 16, 16), np.int16), isVector=False)
    sitk.WriteImage(four_d, str(inp / "fourd_0000.nii.gz"))
    huge_header(inp / "huge_0000.mha")
    out = tmp_path / "out"
    rc, lines = run(capsys, "-i", inp, "-o", out, "-m", model)
    assert rc == 1
    failing = ["corrupt", "fourd", "flat", "huge", "truncated"]
    per_case = [ln for ln in lines if "failed:" not in ln]
    assert len(per_case) == len(failing), lines
    for name, line in zip(sorted(failing), sorted(per_case)):
        assert f"case {name}:" in line and f"{name}_0000" in line, line
    assert any("2-D" in ln for ln in per_case if "flat" in ln)
    assert any("4-D" in ln for ln in per_case if "fourd" in ln)
    assert any("GiB" in ln and "memory" in ln for ln in per_case if "huge" in ln)
    assert "5 of 6 case(s) failed" in lines[-1]
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz"]


def test_huge_header_refused_before_reading(tmp_path):
    header = read_header(huge_header(tmp_path / "h.mha"))
    assert header.n_voxels == 4000 ** 3 and header.bytes_per_voxel == 2
    from fusionseg_kernels.inference.memory import check_fits_in_memory

    with pytest.raises(InputImageError, match="h.mha declares 4000x4000x4000"):
        check_fits_in_memory(header, header.n_voxels * 3)


@pytest.mark.parametrize("what", ["missing", "empty"])
def test_no_input(model, tmp_path, capsys, what):
    src = tmp_path / "nothing_here"
    if what == "empty":
        src.mkdir()
    rc, lines = run(capsys, "-i", src, "-o", tmp_path / "out", "-m", model)
    assert rc == 1 and len(lines) == 1 and str(src) in lines[0]
    assert ("no such file" in lines[0]) if what == "missing" else ("contains no image files" in lines[0])


def test_output_folder_not_writable(model, tmp_path, capsys):
    write_volume(tmp_path / "a_0000.nii.gz", ct_volume((16, 32, 32)))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc, lines = run(capsys, "-i", tmp_path / "a_0000.nii.gz", "-o", blocker / "sub", "-m", model)
    assert rc == 1 and len(lines) == 1 and "cannot be written" in lines[0] and "a_file" in lines[0]


def test_model_folder_errors(model, tmp_path, capsys):
    img = write_volume(tmp_path / "a_0000.nii.gz", ct_volume((16, 32, 32)))
    # no checkpoint in the requested fold
    rc, lines = run(capsys, "-i", img, "-o", tmp_path / "o1", "-m", model, "-f", "3")
    assert rc == 1 and len(lines) == 1 and "fold_3" in lines[0]
    # no plans.json
    empty = tmp_path / "empty_model"
    empty.mkdir()
    rc, lines = run(capsys, "-i", img, "-o", tmp_path / "o2", "-m", empty)
    assert rc == 1 and len(lines) == 1 and "plans.json" in lines[0]
    with pytest.raises(ModelFolderError, match="no fold_"):
        (empty / "plans.json").write_text("{}")
        (empty / "dataset.json").write_text("{}")
        load_model_folder(empty)


def test_checkpoint_errors(tmp_path, capsys):
    img = write_volume(tmp_path / "a_0000.nii.gz", ct_volume((16, 32, 32)))
    # weights of another size than plans.json describes
    wrong = create_model_folder(tmp_path / "wrong", tiny_network(features=(8, 16, 32, 32)), tiny_plans())
    with pytest.raises(CheckpointError, match="do not fit the DualBranchUNet"):
        load_model_folder(wrong)
    rc, lines = run(capsys, "-i", img, "-o", tmp_path / "o1", "-m", wrong)
    assert rc == 1 and len(lines) == 1 and "checkpoint_final.pth" in lines[0]
    # a corrupt checkpoint file
    corrupt = make_model_folder(tmp_path / "corrupt")
    (corrupt / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint" * 10)
    rc, lines = run(capsys, "-i", img, "-o", tmp_path / "o2", "-m", corrupt)
    assert rc == 1 and len(lines) == 1 and "corrupt/fold_0/checkpoint_final.pth" in lines[0]
    assert "checkpoint" in lines[0].split("checkpoint_final.pth", 1)[1]
    assert not (tmp_path / "o1").exists() or not any((tmp_path / "o1").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is present")
def test_cuda_requested_without_gpu(model, tmp_path, capsys):
    img = write_volume(tmp_path / "a_0000.nii.gz", ct_volume((16, 32, 32)))
    rc = main(["predict", "-i", str(img), "-o", str(tmp_path / "o"), "-m", str(model), "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "no CUDA GPU" in err[0]


def test_interrupt_in_a_case(model, tmp_path):
    """KeyboardInterrupt during the second case: the first mask stays, nothing of the second is
    written, the third is not started, the interrupted case is named."""
    paths = [write_volume(tmp_path / "in" / f"c{i}_0000.nii.gz", ct_volume((16, 40, 40), seed=i)) for i in range(3)]
    tiles = []

    def on_tile():
        tiles.append(1)
        if len(tiles) == 6:   # c0 has 4 tiles: this is the second tile of c1
            raise KeyboardInterrupt

    lines = []
    predictor = Predictor(model, PredictOptions(device="cpu", quiet=True))
    results = predictor.predict_paths(paths, tmp_path / "out", report=lines.append, on_tile=on_tile)
    assert [r.status for r in results] == ["ok", "interrupted"]
    assert results[0].tiles == 4
    assert len(lines) == 1 and "c1_0000" in lines[0] and "interrupted" in lines[0]
    assert "1 case(s) not started" in lines[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c0.nii.gz"]


def test_interrupt_signal_exit_status(model, tmp_path, capsys):
    """A real interrupt (as Ctrl-C delivers it) while the command runs: exit status 130 and no
    partial file in the output folder."""
    img = write_volume(tmp_path / "big_0000.nii.gz", ct_volume((48, 96, 96), seed=3))
    timer = threading.Timer(1.5, _thread.interrupt_main)
    timer.start()
    try:
        rc = main(["predict", "-i", str(img), "-o", str(tmp_path / "out"), "-m", str(model),
                   "--device", "cpu", "--quiet"])
    finally:
        timer.cancel()
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted" in err
    out = tmp_path / "out"
    assert not out.exists() or (leftovers(out) == [] and not (out / "big.nii.gz").exists())
