"""How much memory a case may use: what is available (psutil or /proc, capped by a cgroup
limit) and the check made from a file's header before its voxels are read."""
from __future__ import annotations

from pathlib import Path

from fusionseg_kernels.errors import InputImageError
from fusionseg_kernels.imageio import ImageHeader


def available_memory_bytes() -> int:
    """Memory this process can still use: psutil's (or /proc/meminfo's) available memory, capped
    by a cgroup v2 memory limit when one is set."""
    avail = None
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        avail = int(line.split()[1]) * 1024
        except OSError:
            pass
    if avail is None:
        avail = 1 << 62
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def check_fits_in_memory(header: ImageHeader, needed_bytes: int, available: int | None = None) -> None:
    """Raises `InputImageError` when processing the image needs more memory than is available."""
    available = available_memory_bytes() if available is None else available
    if needed_bytes > available:
        raise InputImageError(
            f"{header.path} declares {header.size_xyz[0]}x{header.size_xyz[1]}x{header.size_xyz[2]} "
            f"voxels ({header.pixel_type}), which need about {needed_bytes / 2**30:.1f} GiB to segment "
            f"but only {max(available, 0) / 2**30:.1f} GiB of memory is available.")


