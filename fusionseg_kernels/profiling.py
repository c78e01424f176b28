"""Memory-time profiles of a command or a block of code, measured the way the FLARE challenge
measures a submission.

A background thread reads the memory in use every `interval` seconds (it reads, then sleeps
`interval`, so the real period is a little longer; the measured mean is reported) while the
command or block runs:

- on a GPU machine, the whole device's used memory through NVML (``total - free``, in MB of
  2**20 bytes) — the CUDA context and every other process on that GPU included;
- without a GPU (NVML cannot be initialised), the resident memory (RSS) of the process tree
  (the command and all its children; for a block of code, this process and its children), and
  ``device`` says so.

A profile reports ``time_s`` (wall clock), ``max_mem_mb`` (the largest sample), ``auc_mb_s``
(the area under the memory-time curve as FLARE computes it: sum of the samples times the nominal
interval), ``samples``, ``interval_s``, ``mean_interval_s``, ``device``, ``source`` and the
``curve`` ([seconds since start, MB] per sample).

Library use::

    from fusionseg_kernels.profiling import profile_command, profile_memory

    with profile_memory(interval=0.1) as prof:
        run_inference()
    print(prof.result["max_mem_mb"], prof.result["auc_mb_s"])

    result = profile_command(["python", "predict.py"], interval=0.1)   # exit status in result

Command line: ``fusionseg profile [--json FILE] [--interval 0.1] [--device-index N] -- COMMAND ...``
and, once per case as FLARE runs a container per case,
``fusionseg profile --per-case -i INPUT_DIR -o OUTPUT_DIR -- COMMAND with {input} and {output}``.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from fusionseg_kernels import atomic
from fusionseg_kernels.errors import FusionsegError

DEFAULT_INTERVAL_S = 0.1
CASE_SUFFIXES = ("_0000.nii.gz", "_0000.nii")
MB = float(1 << 20)


class ProfileError(FusionsegError, ValueError):
    """A profile that cannot be taken: no command, a command that cannot be started, an input
    folder without cases, or a memory source that is not available."""


# ----------------------------------------------------------------------------- memory sources

class MemorySource:
    """What the sampler reads: `read_mb()` returns the memory in use now, in MB (2**20 bytes).
    `source` names the kind ("nvml", "rss"), `device` says what is measured."""

    source = "unknown"
    device = "unknown"

    def read_mb(self) -> float:
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
    end between two samples simply stop counting; once the root has ended, a sample is 0."""

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

    def read_mb(self) -> float:
        ps = self._psutil
        if self._root is None:
            return 0.0
        try:
            procs = [self._root] + self._root.children(recursive=True)
        except (ps.NoSuchProcess, ps.ZombieProcess, ps.AccessDenied):
            return 0.0
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


def nvml_available(device_index: int = 0) -> tuple[bool, str]:
    """(True, "") when NVML can be initialised and the device exists, else (False, why)."""
    try:
        src, why = _try_nvml("auto", device_index)
    except ProfileError as err:
        return False, str(err)
    if src is None:
        return False, why
    src.close()
    return True, ""


def open_source(kind: str = "auto", device_index: int = 0, pid: int | None = None) -> MemorySource:
    """A memory source: "nvml" (the GPU; error if unavailable), "rss" (the process tree of `pid`)
    or "auto" (NVML when it works, else RSS, with the reason in `device`)."""
    src, why = _try_nvml(kind, device_index)
    return src if src is not None else ProcessTreeRssSource(pid, reason=why)


# ----------------------------------------------------------------------------- the sampler

def summarize(times: Sequence[float], values: Sequence[float], interval: float) -> dict:
    """FLARE's figures from a sampled curve: the largest sample, the rectangle sum at the nominal
    interval, the number of samples and the measured mean interval between them."""
    n = len(values)
    return {
        "max_mem_mb": max(values) if n else None,
        "auc_mb_s": sum(values) * interval,
        "samples": n,
        "interval_s": interval,
        "mean_interval_s": (times[-1] - times[0]) / (n - 1) if n > 1 else None,
    }


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

    def start(self, t0: float | None = None) -> "MemorySampler":
        self._t0 = self._clock() if t0 is None else t0
        self._thread = threading.Thread(target=self._run, name="fusionseg-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = float(self.source.read_mb())
            except StopIteration:  # a scripted source that has nothing more to say
                return
            except Exception as err:  # noqa: BLE001 - keep what was sampled, say why it stopped
                self.error = f"{type(err).__name__}: {err}"
                return
            self.times.append(self._clock() - self._t0)
            self.values.append(value)
            self._stop.wait(self.interval)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the sampling thread to end by itself (a source that runs out)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.summary()

    def summary(self) -> dict:
        times, values = list(self.times), list(self.values)
        out = summarize(times, values, self.interval)
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
        finally:
            self._source.close()
        return False


# ----------------------------------------------------------------------------- commands

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
    if interrupted:
        result["interrupted"] = True
    return result


# ----------------------------------------------------------------------------- per case (FLARE)

def nifti_size(path: Path) -> list[int] | None:
    """The image size (dim[1..ndim], NIfTI order x, y, z) from a NIfTI-1/2 header, None if the
    file is not one."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(540)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            dim = struct.unpack(endian + "8q", head[16:80])
            break
    else:
        return None
    ndim = dim[0]
    return list(dim[1:1 + ndim]) if 1 <= ndim <= 7 else None


def find_cases(input_dir: Path) -> list[tuple[str, Path]]:
    """[(case name, file)] of the `<case>_0000.nii.gz` images in a folder, sorted by name."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise ProfileError(f"input folder {str(input_dir)!r} does not exist.")
    cases = []
    for f in sorted(input_dir.iterdir()):
        for suffix in CASE_SUFFIXES:
            if f.is_file() and f.name.endswith(suffix):
                cases.append((f.name[:-len(suffix)], f))
                break
    if not cases:
        raise ProfileError(f"input folder {str(input_dir)!r} holds no <case>_0000.nii.gz images.")
    return cases


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
    cases = find_cases(input_dir)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case, image in cases:
        with tempfile.TemporaryDirectory(prefix=f"fusionseg-case-{case}-") as tmp:
            _case_link(image, Path(tmp))
            cmd = [c.replace("{input}", tmp).replace("{output}", str(output_dir)) for c in command]
            result = profile_command(cmd, interval=interval, device_index=device_index, source=source)
        result = {"case": case, "image": str(image), "image_size": nifti_size(image),
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


def memory_label(source: str) -> str:
    return "GPU" if source == "nvml" else "RSS"


def case_table(result: dict) -> tuple[list[str], list[list[str]]]:
    """The per-case table: case, image size, running time s, max GPU MB, total GPU MB·s (RSS in
    place of GPU when no GPU was measured), samples, exit status."""
    kind = memory_label(result["summary"].get("source", "nvml"))
    head = ["case", "image size", "running time s", f"max {kind} MB", f"total {kind} MB·s", "samples",
            "exit status"]
    rows = []
    for r in result["cases"]:
        size = "×".join(str(s) for s in r["image_size"]) if r.get("image_size") else "unknown"
        rows.append([r["case"], size, f"{r['time_s']:.2f}",
                     "-" if r["max_mem_mb"] is None else f"{r['max_mem_mb']:.0f}",
                     f"{r['auc_mb_s']:.1f}", str(r["samples"]), str(r["exit_status"])])
    return head, rows


def write_json(path: Path, result: dict) -> None:
    atomic.write_json(path, result, indent=1)


def write_case_files(result: dict, json_path: Path) -> list[Path]:
    """Writes the per-case result: JSON (everything, curves included), the table as CSV and
    Markdown (same stem), and every case's memory-time curve as `<stem>_curves.csv`."""
    json_path = Path(json_path)
    head, rows = case_table(result)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    w.writerows(rows)
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    s = result["summary"]
    md += ["", f"Memory: {s['device']}; sampled every {result['interval_s']} s (measured mean interval "
               "per case in the JSON); total = sum of samples × nominal interval."]
    curves = io.StringIO()
    cw = csv.writer(curves)
    cw.writerow(["case", "t_s", "mem_mb"])
    for r in result["cases"]:
        for t, v in r["curve"]:
            cw.writerow([r["case"], t, v])
    paths = [json_path, json_path.with_suffix(".csv"), json_path.with_suffix(".md"),
             json_path.with_name(json_path.stem + "_curves.csv")]
    write_json(paths[0], result)
    atomic.write_text(paths[1], buf.getvalue())
    atomic.write_text(paths[2], "\n".join(md) + "\n")
    atomic.write_text(paths[3], curves.getvalue())
    return paths


# ----------------------------------------------------------------------------- command line

def _one_line(r: dict) -> str:
    peak = "-" if r["max_mem_mb"] is None else f"{r['max_mem_mb']:.0f}"
    mean = "-" if r["mean_interval_s"] is None else f"{r['mean_interval_s']:.3f}"
    kind = memory_label(r["source"])
    return (f"time {r['time_s']:.2f} s, max {kind} {peak} MB, total {kind} {r['auc_mb_s']:.1f} MB·s, "
            f"{r['samples']} samples (mean interval {mean} s), exit status {r['exit_status']}")


def run_cli(args, error: Callable[[str], None]) -> int:
    """`fusionseg profile`: `error` is the parser's error function (usage mistakes exit 2)."""
    import sys

    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        error("give the command to profile after `--`")
    if not args.interval > 0:
        error("--interval must be positive")
    if args.per_case:
        if args.input is None or args.output is None:
            error("--per-case needs -i INPUT_FOLDER and -o OUTPUT_FOLDER")

        def progress(r):
            print(f"fusionseg profile: {r['case']}: {_one_line(r)}", file=sys.stderr, flush=True)

        result = profile_cases(command, args.input, args.output, args.interval, args.device_index,
                               args.source, progress=progress)
        json_path = args.json or Path(args.output) / "profile.json"
        paths = write_case_files(result, json_path)
        print(f"fusionseg profile: {result['summary']['cases']} cases on {result['summary']['device']}; "
              f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
        failed = [r for r in result["cases"] if r["exit_status"] != 0]
        return failed[0]["exit_status"] if failed else 0
    if args.input is not None or args.output is not None:
        error("-i/-o belong to --per-case")
    result = profile_command(command, args.interval, args.device_index, args.source)
    print(f"fusionseg profile: {_one_line(result)}; {result['device']}", file=sys.stderr)
    if args.json:
        write_json(args.json, result)
    return result["exit_status"]
