"""Every code block in README.md and docs/*.md runs as written.

```python blocks run in a fresh interpreter of the project's environment (the docs say to use
.venv/bin/python); ```bash blocks run as a user types them into a plain shell: in bash from the
repository root, without the environment on PATH (a block that needs it says
`source .venv/bin/activate`). A shell block that starts the test suite or the benchmarks themselves
(`make ...`), needs a CUDA GPU, or runs an hours-long training is not run here; every other one
is. Blocks meant to be read, not run (output, sketches), are written as ```text.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)
# Shell commands that cannot run inside the test suite, and why.
NOT_HERE = {
    r"\bmake\b": "runs the test suite or the benchmarks themselves",
    r"gpu_check\.sh": "needs a CUDA GPU",
    r"--device cuda|FUSIONSEG_CUDA_ARCH|-num_gpus": "needs a CUDA GPU",
    r"\bcmake\b": "a separate build of the whole library (minutes)",
}


def _blocks():
    for doc in DOCS:
        for match in BLOCK.finditer(doc.read_text()):
            lang, code = match.group(1), match.group(2)
            if lang not in ("python", "bash", "sh"):
                continue
            line = doc.read_text()[:match.start()].count("\n") + 1
            marks = []
            if lang != "python":
                for pattern, why in NOT_HERE.items():
                    if re.search(pattern, code):
                        marks.append(pytest.mark.skip(reason=f"{why} ({pattern})"))
                        break
            if "cuda" in code and lang == "python" and not torch.cuda.is_available() and "is_available" not in code:
                marks.append(pytest.mark.skip(reason="needs a CUDA GPU; none on this machine"))
            yield pytest.param(lang, code, id=f"{doc.relative_to(ROOT)}:{line}", marks=marks)


@pytest.mark.parametrize("lang, code", list(_blocks()))
def test_code_block_runs(lang, code, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    if lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
                                  f"--- stderr\n{proc.stderr[-3000:]}")
