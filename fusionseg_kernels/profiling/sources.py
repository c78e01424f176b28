"""What the profiler samples: the whole GPU's used memory through NVML, or the resident memory
(RSS) of a process tree."""
from __future__ import annotations

import os

from fusionseg_kernels.errors import ProfileError

MB = float(1 << 20)


class MemorySource:
    """What the sampler reads: `read_mb()` returns the memory in use now, in MB (2**20 bytes).
    `source` names the kind ("nvml", "rss"), `device` says what is measured."""

    source = "unknown"
    device = "unknown"

    def read_mb(self) -> float | None:
        """MB in use now, or None when there is nothing to measure any more."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class NvmlSource(MemorySource):
    """Used memory of one whole GPU: NVML's total - free (what FLARE's sampler queries).
    `nvml` is the NVML binding (the `pynvml` module of nvidia-ml-py by default)."""

    source = "nvml"

    def __init__(self, device_index: int = 0, nvml=None):
        if nvml is None:
            import pynvml as nvml
        self._nvml = nvml
        nvml.nvmlInit()
        try:
            count = nvml.nvmlDeviceGetCount()
            if not 0 <= device_index < count:
                raise ProfileError(f"GPU index {device_index} does not exist; NVML sees {count} device(s).")
            self._handle = nvml.nvmlDeviceGetHandleByIndex(device_index)
            name = nvml.nvmlDeviceGetName(self._handle)
            name = name.decode() if isinstance(name, bytes) else name
        except BaseException:
            nvml.nvmlShutdown()
            raise
        self.device = f"GPU {device_index}: {name} (NVML, used memory of the whole device)"

    def read_mb(self) -> float:
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return (info.total - info.free) / MB

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down twice or after a driver error
            pass


class ProcessTreeRssSource(MemorySource):
    """Resident memory (RSS) of a process and all its descendants, through psutil. Processes that
    end between two samples simply stop counting; once the root has ended there is nothing to
    measure, and `read_mb` returns None (no sample, rather than a 0 that was never measured)."""

    source = "rss"

    def __init__(self, pid: int | None = None, reason: str = ""):
        import psutil

        self._psutil = psutil
        self.pid = os.getpid() if pid is None else pid
        try:
            self._root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            self._root = None
        why = f"; {reason}" if reason else ""
        self.device = f"CPU: no GPU measured{why}; resident memory (RSS) of process {self.pid} and its children"

    def read_mb(self) -> float | None:
        ps = self._psutil
        if self._root is None:
            return None
        try:
            if self._root.status() == ps.STATUS_ZOMBIE:
                return None
            procs = [self._root] + self._root.children(recursive=True)
        except (ps.NoSuchProcess, ps.ZombieProcess, ps.AccessDenied):
            return None
        total = 0
        for proc in procs:
            try:
                if proc.status() == ps.STATUS_ZOMBIE:
                    continue
                total += proc.memory_info().rss
            except (ps.NoSuchProcess, ps.ZombieProcess, ps.AccessDenied):
                continue
        return total / MB


def _try_nvml(kind: str, device_index: int) -> tuple[MemorySource | None, str]:
    """(NvmlSource, "") for "auto"/"nvml" when NVML works; (None, why) otherwise ("nvml" raises)."""
    if kind not in ("auto", "nvml", "rss"):
        raise ProfileError(f"unknown memory source {kind!r}; use auto, nvml or rss.")
    if kind == "rss":
        return None, "RSS requested"
    try:
        return NvmlSource(device_index), ""
    except ProfileError:
        raise
    except Exception as err:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound, driver errors
        if kind == "nvml":
            raise ProfileError(f"NVML cannot be used ({type(err).__name__}: {err}).") from err
        return None, f"NVML unavailable ({type(err).__name__})"


def open_source(kind: str = "auto", device_index: int = 0, pid: int | None = None) -> MemorySource:
    """A memory source: "nvml" (the GPU; error if unavailable), "rss" (the process tree of `pid`)
    or "auto" (NVML when it works, else RSS, with the reason in `device`)."""
    src, why = _try_nvml(kind, device_index)
    return src if src is not None else ProcessTreeRssSource(pid, reason=why)
