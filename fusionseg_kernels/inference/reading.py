"""Reading cases ahead, on a background thread, without torch.

A case's voxels are read while something else runs: the first case while torch imports, CUDA
initialises and the model loads (`start_reading`, called by ``fusionseg predict`` before it
imports torch), and each next case while the current one is segmented (`ReadAhead`). Inflating
(ISA-L) and SimpleITK's reading release the GIL, so the read uses the other core.

Memory stays bounded: at most one case is read ahead, and a case read ahead waits for the one
before it to finish unless both fit in the available memory at once.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fusionseg_kernels import imageio
from fusionseg_kernels.imageio import ImageHeader

from .memory import available_memory_bytes, check_fits_in_memory


@dataclass
class LoadedCase:
    header: ImageHeader
    voxels: np.ndarray
    seconds: float          # time spent reading it, on whichever thread read it


def load_case(path: Path, check_header: Callable[[ImageHeader], None]) -> LoadedCase:
    """Reads one image: its header, `check_header` (which raises to refuse it before any voxel
    is read), the file's completeness, then its voxels."""
    t0 = time.perf_counter()
    header = imageio.read_header(path)
    check_header(header)
    imageio.check_complete(header)
    voxels = imageio.read_image(header)
    return LoadedCase(header, voxels, time.perf_counter() - t0)


def voxels_fit(header: ImageHeader) -> None:
    """The check made before the model is known: the voxels (twice, for a conversion) and a
    margin must fit in the available memory. The model's own estimate follows once it is loaded."""
    check_fits_in_memory(header, 2 * header.n_voxels * header.bytes_per_voxel + (1 << 30))


def run_in_thread(work: Callable[[], object], name: str, daemon: bool = True) -> Future:
    """`work()` on a new thread; its future. A non-daemon thread (a write) is waited for when the
    interpreter exits, so a file being written is finished (and renamed into place) first."""
    future: Future = Future()

    def run():
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(work())
        except BaseException as err:   # the consumer raises it where the case is segmented
            future.set_exception(err)

    threading.Thread(target=run, name=name, daemon=daemon).start()
    return future


def start_reading(path: Path) -> Future:
    """Starts reading `path` on a background thread (with `voxels_fit` as its check); the
    future's result is the `LoadedCase`, or raises what reading raised."""
    return run_in_thread(lambda: load_case(Path(path), voxels_fit), f"read {Path(path).name}")


class ReadAhead:
    """Hands out the cases of a run in order, each read on a background thread while the case
    before it is segmented. `take(i)` returns case i's future and starts reading case i + 1; that
    read waits for `done(i)` unless both cases' memory estimates fit in the available memory."""

    def __init__(self, sources: Sequence[Path], check_header: Callable[[ImageHeader], None],
                 memory_needed: Callable[[ImageHeader], int], first: Future | None = None):
        self.sources, self.check_header, self.memory_needed = list(sources), check_header, memory_needed
        self.futures: dict[int, Future] = {0: first} if first is not None else {}
        self.finished: dict[int, threading.Event] = {}
        self.headers: dict[int, ImageHeader] = {}

    def take(self, i: int) -> Future:
        future = self.futures.pop(i, None)
        if future is None:
            future = self._start(i, wait_for=None)
        if i + 1 < len(self.sources):
            self.finished[i] = threading.Event()
            self.futures[i + 1] = self._start(i + 1, wait_for=i)
        return future

    def done(self, i: int) -> None:
        """Case i is segmented (or failed): a read waiting for memory may go on."""
        event = self.finished.pop(i, None)
        if event is not None:
            event.set()

    def _start(self, i: int, wait_for: int | None) -> Future:
        src = Path(self.sources[i])
        previous = self.finished.get(wait_for) if wait_for is not None else None

        def check(header: ImageHeader) -> None:
            self.check_header(header)
            if previous is not None:
                current = self.headers.get(wait_for) or self._peek_header(wait_for)
                if current is None or self.memory_needed(header) + self.memory_needed(current) > \
                        available_memory_bytes():
                    previous.wait()     # not both at once: read it when the case before is done
            self.headers[i] = header

        return run_in_thread(lambda: load_case(src, check), f"read {src.name}")

    def _peek_header(self, i: int) -> ImageHeader | None:
        """Case i's header when its own read has not reached it yet (the two reads run on separate
        threads); None if it cannot be read, and then the caller waits for case i to be done."""
        try:
            return imageio.read_header(Path(self.sources[i]))
        except Exception:   # that case's own read reports the problem
            return None

    def cancel(self) -> None:
        """Lets waiting reads go (their results are dropped)."""
        for event in self.finished.values():
            event.set()
        self.futures.clear()
