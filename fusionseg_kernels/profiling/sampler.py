"""The sampler (a background thread reading a memory source every interval), FLARE's figures
from its curve, and the profile of a block of code or of a command."""
from __future__ import annotations

import signal
import subprocess
import threading
import time
from typing import Callable, Sequence

from fusionseg_kernels.errors import ProfileError

from .sources import MemorySource, ProcessTreeRssSource, _try_nvml, open_source

DEFAULT_INTERVAL_S = 0.1


def summarize(times: Sequence[float], values: Sequence[float], interval: float,
              end_s: float | None = None) -> dict:
    """FLARE's figures from a sampled curve: the largest sample, the rectangle sum at the nominal
    interval, the number of samples and the measured mean interval between them. Beside them, the
    area as measured: each sample held until the next one (or the end of the run at `end_s`, or
    one interval at most), which does not overstate a run shorter than an interval."""
    n = len(values)
    ends = list(times[1:]) + [end_s if end_s is not None else (times[-1] + interval if n else 0.0)]
    measured = sum(v * min(max(t1 - t0, 0.0), interval) for t0, t1, v in zip(times, ends, values))
    return {
        "max_mem_mb": max(values) if n else None,
        "auc_mb_s": sum(values) * interval,
        "auc_mb_s_measured": measured if n else 0.0,
        "samples": n,
        "interval_s": interval,
        "mean_interval_s": (times[-1] - times[0]) / (n - 1) if n > 1 else None,
    }


def resolution_note(time_s: float, interval: float, samples: int) -> str:
    """What the sampling can and cannot see, stated with every profile."""
    note = (f"one sample every {interval:g} s from the start (and one at the exit where the memory can "
            f"still be read): a peak shorter than the interval can fall between two samples")
    if samples == 0:
        note += "; the command ended before its memory could be sampled, so its peak is unknown"
    elif time_s < 3 * interval:
        note += (f"; this run ({time_s:.3f} s) is shorter than three intervals, so FLARE's area (samples x "
                 f"interval) overstates it: auc_mb_s_measured holds each sample only until the run ended")
    return note


class MemorySampler:
    """Reads `source` in a background thread: one sample right after `start()`, then one every
    `interval` seconds (read, then wait) until `stop()`. A source error ends the sampling and is
    recorded in `error`; the samples taken so far are kept."""

    def __init__(self, source: MemorySource, interval: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.perf_counter):
        if not interval > 0:
            raise ProfileError(f"the sampling interval must be positive, not {interval}.")
        self.source, self.interval, self._clock = source, float(interval), clock
        self.times: list[float] = []
        self.values: list[float] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self.end_s: float | None = None   # when the sampling stopped, seconds after the start

    def start(self, t0: float | None = None) -> "MemorySampler":
        self._t0 = self._clock() if t0 is None else t0
        self._thread = threading.Thread(target=self._run, name="fusionseg-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = self.source.read_mb()
            except StopIteration:  # a scripted source that has nothing more to say
                return
            except Exception as err:  # noqa: BLE001 - keep what was sampled, say why it stopped
                self.error = f"{type(err).__name__}: {err}"
                return
            if value is not None:  # None: nothing to measure now (the process has ended)
                self.times.append(self._clock() - self._t0)
                self.values.append(float(value))
            self._stop.wait(self.interval)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the sampling thread to end by itself (a source that runs out)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self, final_sample: bool = True) -> dict:
        """Ends the sampling, with one more sample at the end (the state at the exit) unless the
        source failed."""
        already = self._stop.is_set()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.end_s = self._clock() - self._t0
        if final_sample and not already and self.error is None:
            try:
                value = self.source.read_mb()
            except Exception:  # noqa: BLE001 - a source that has ended (a scripted one) adds nothing
                value = None
            if value is not None:
                self.times.append(self.end_s)
                self.values.append(float(value))
        return self.summary()

    def summary(self) -> dict:
        times, values = list(self.times), list(self.values)
        out = summarize(times, values, self.interval, self.end_s)
        out.update(device=self.source.device, source=self.source.source,
                   curve=[[round(t, 6), round(v, 3)] for t, v in zip(times, values)])
        if self.error:
            out["sampler_error"] = self.error
        return out


class profile_memory:  # noqa: N801 - used like a function: `with profile_memory() as prof:`
    """Context manager: samples memory while the block runs; `result` holds the profile (with
    `time_s`, the block's wall time) after the block, also when it raised."""

    def __init__(self, interval: float = DEFAULT_INTERVAL_S, device_index: int = 0, source="auto"):
        self._source = source if isinstance(source, MemorySource) else open_source(source, device_index)
        self._sampler = MemorySampler(self._source, interval)
        self.result: dict | None = None

    def __enter__(self) -> "profile_memory":
        self._start = time.perf_counter()
        self._sampler.start(self._start)
        return self

    def __exit__(self, *exc) -> bool:
        elapsed = time.perf_counter() - self._start
        try:
            self.result = {"time_s": elapsed, **self._sampler.stop()}
            self.result["resolution_note"] = resolution_note(elapsed, self._sampler.interval, self.result["samples"])
        finally:
            self._source.close()
        return False


def exit_status(returncode: int) -> int:
    """A shell-style exit status: a command killed by signal N gives 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def profile_command(command: Sequence[str], interval: float = DEFAULT_INTERVAL_S, device_index: int = 0,
                    source: str | MemorySource = "auto", cwd=None, env=None) -> dict:
    """Runs `command`, sampling memory meanwhile; returns the profile with `returncode` (negative:
    killed by that signal), `exit_status` and `command`. The wall time runs from just before the
    command starts until it has ended. A command that fails, is killed or ends before the first
    sample still gives a full profile; one that cannot be started raises ProfileError."""
    command = [str(c) for c in command]
    if not command:
        raise ProfileError("no command to profile; give it after `--`.")
    nvml_src, reason = (None, "") if isinstance(source, MemorySource) else _try_nvml(source, device_index)
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(command, cwd=cwd, env=env)
    except OSError as err:
        if nvml_src is not None:
            nvml_src.close()
        raise ProfileError(f"cannot start {command[0]!r}: {err.strerror or err}.") from err
    if isinstance(source, MemorySource):
        src = source
    else:
        src = nvml_src or ProcessTreeRssSource(proc.pid, reason=reason)
    sampler = MemorySampler(src, interval).start(started)
    interrupted = False
    try:
        try:
            returncode = proc.wait()
        except KeyboardInterrupt:
            interrupted = True
            proc.send_signal(signal.SIGINT)
            try:
                returncode = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                returncode = proc.wait()
        elapsed = time.perf_counter() - started
        summary = sampler.stop()
    finally:
        sampler.stop()
        src.close()
    result = {"command": command, "returncode": returncode, "exit_status": exit_status(returncode),
              "time_s": elapsed, **summary}
    result["resolution_note"] = resolution_note(elapsed, interval, result["samples"])
    if interrupted:
        result["interrupted"] = True
    return result
