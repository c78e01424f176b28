"""FLARE's protocol: one run of the command per case, its input folder holding only that case."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from fusionseg_kernels import imageio
from fusionseg_kernels.errors import ProfileError

from .sampler import DEFAULT_INTERVAL_S, profile_command


def _case_link(src: Path, folder: Path) -> Path:
    dst = folder / src.name
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def profile_cases(command: Sequence[str], input_dir: Path, output_dir: Path,
                  interval: float = DEFAULT_INTERVAL_S, device_index: int = 0, source: str = "auto",
                  progress: Callable[[dict], None] | None = None) -> dict:
    """FLARE's protocol: the command runs once per case, `{input}` replaced by a fresh temporary
    folder holding only that case's `<case>_0000.nii.gz` and `{output}` by `output_dir` (where the
    command is to write `<case>.nii.gz`). Returns {"cases": [per-case profile with case,
    image_size, output_written], "summary": {...}}."""
    command = [str(c) for c in command]
    if not command:
        raise ProfileError("no command to profile; give it after `--`.")
    if not any("{input}" in c for c in command):
        raise ProfileError("the per-case command must contain {input} (the one-case input folder).")
    cases = imageio.find_case_images(input_dir)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case, image in cases:
        with tempfile.TemporaryDirectory(prefix=f"fusionseg-case-{case}-") as tmp:
            _case_link(image, Path(tmp))
            cmd = [c.replace("{input}", tmp).replace("{output}", str(output_dir)) for c in command]
            result = profile_command(cmd, interval=interval, device_index=device_index, source=source)
        result = {"case": case, "image": str(image), "image_size": imageio.nifti_dims(image),
                  "output_written": (output_dir / f"{case}.nii.gz").exists(), **result}
        rows.append(result)
        if progress:
            progress(result)
    return {"protocol": "one command run per case, input folder holding only that case",
            "command_template": command, "input_dir": str(input_dir), "output_dir": str(output_dir),
            "interval_s": interval, "cases": rows, "summary": summarize_cases(rows)}


def summarize_cases(rows: Sequence[dict]) -> dict:
    if not rows:
        return {"cases": 0}
    maxes = [r["max_mem_mb"] for r in rows if r["max_mem_mb"] is not None]
    return {"cases": len(rows), "failed": sum(r["returncode"] != 0 for r in rows),
            "mean_time_s": sum(r["time_s"] for r in rows) / len(rows),
            "max_mem_mb": max(maxes) if maxes else None,
            "mean_max_mem_mb": sum(maxes) / len(maxes) if maxes else None,
            "mean_auc_mb_s": sum(r["auc_mb_s"] for r in rows) / len(rows),
            "device": rows[0]["device"], "source": rows[0]["source"]}
