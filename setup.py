"""Builds fusionseg_kernels: the Python package plus its C++/CUDA operator library.

The library is built by CMakeLists.txt (the one build definition) in a persistent build folder,
so a rebuild recompiles only what changed. Install with
``pip install --no-build-isolation -e .`` so it is built against the torch that will load it.

Environment:
  FUSIONSEG_WITH_CUDA   auto (default: when a CUDA toolkit is found), 1 or 0
  FUSIONSEG_CUDA_ARCH   compute capabilities (default in CMakeLists.txt: "8.0;8.6;8.9;9.0"; PTX for the newest)
  CUDA_HOME             the toolkit root (found from nvcc otherwise, wrapper scripts resolved)
  MAX_JOBS              parallel compile jobs (default: CPU count)
  FUSIONSEG_BUILD_DIR   the CMake build folder (default build/cmake)
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _is_toolkit_root(path):
    return path is not None and any(
        (Path(path) / sub / "libcudart.so").exists()
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib")
    )


def find_cuda_toolkit():
    """The CUDA toolkit root, or None. `nvcc` on PATH may be a wrapper script: follow it."""
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
        if _is_toolkit_root(os.environ.get(var)):
            return Path(os.environ[var])
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        if _is_toolkit_root(real.parent.parent):
            return real.parent.parent
        try:  # a wrapper script: look for the real nvcc it runs
            text = real.read_text(errors="ignore")
        except OSError:
            text = ""
        for candidate in re.findall(r"(/[\w./+-]+)/bin/nvcc", text):
            if _is_toolkit_root(candidate):
                return Path(candidate)
    for candidate in sorted(Path("/usr/local").glob("cuda*"), reverse=True):
        if _is_toolkit_root(candidate):
            return candidate
    return None


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import torch  # noqa: F401  (fail early with a clear message if missing)

        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        # Editable/in-place installs load the library from the source tree: let CMake's post-build
        # step write it there, so a plain `cmake --build build/cmake` also updates what Python loads.
        in_tree = self.inplace or getattr(self, "editable_mode", False)
        output = ROOT / "fusionseg_kernels" / target.name if in_tree else target
        build_dir = Path(os.environ.get("FUSIONSEG_BUILD_DIR", ROOT / "build" / "cmake"))
        build_dir.mkdir(parents=True, exist_ok=True)

        want_cuda = os.environ.get("FUSIONSEG_WITH_CUDA", "auto").lower()
        args = [
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DFUSIONSEG_LIBRARY_OUTPUT={output}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        # the defaults of these live in CMakeLists.txt only: pass what the user set, nothing else
        args += [f"-D{name}={os.environ[name]}" for name in ("FUSIONSEG_CUDA_ARCH", "FUSIONSEG_BUILD_EXAMPLES")
                 if os.environ.get(name)]
        toolkit = find_cuda_toolkit() if want_cuda in ("auto", "1", "on") else None
        if want_cuda in ("1", "on") and toolkit is None:
            sys.exit("fusionseg: FUSIONSEG_WITH_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME")
        if toolkit is not None:
            args += [
                "-DFUSIONSEG_WITH_CUDA=ON",
                f"-DCMAKE_CUDA_COMPILER={toolkit / 'bin' / 'nvcc'}",
                f"-DCUDAToolkit_ROOT={toolkit}",
            ]
        else:
            args.append("-DFUSIONSEG_WITH_CUDA=OFF")
        if shutil.which("ninja") and not (build_dir / "Makefile").exists():
            args.append("-GNinja")
        print(f"fusionseg: configuring in {build_dir} with CUDA toolkit {toolkit}", flush=True)
        subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args])
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", str(build_dir), "-j", jobs])
        if output != target:
            shutil.copy2(output, target)


setup(
    packages=find_packages(include=["fusionseg_kernels", "fusionseg_kernels.*"])
    + ["fusionseg_kernels.models"],
    package_dir={"fusionseg_kernels.models": "models"},
    package_data={"fusionseg_kernels": ["ops/*/*.json"]},
    ext_modules=[CMakeExtension("fusionseg_kernels._C")],
    cmdclass={"build_ext": CMakeBuild},
)
