"""Whether the machine was quiet while a benchmark timed something, and whether its numbers hold.

A benchmark's figures mean nothing when another process shares the CPU: on a 2-core machine a
parallel region that must wait for a scheduler tick takes ~8 ms whatever it computes. So every
timed job of the benchmarks runs inside a `MachineMonitor`, which records before, during (one
window every `interval` seconds) and after:

- the CPU time used by **other processes**: the busy time of /proc/stat (user, nice, system,
  irq, softirq) minus the CPU time of this process and its children, in cores;
- **steal** time (the hypervisor running someone else on our virtual CPUs), in cores;
- the load average;
- on a GPU (NVML): the other processes on the device and, when NVML reports them, clock
  throttle reasons.

`Timings` keeps every repeat of a timed quantity (median, min, IQR / median), and
`judge` turns the monitor's record and the spreads into a verdict: *quiet* when other processes
used at most `OTHER_CPU_LIMIT` of one core on average (and no window above
`OTHER_CPU_WINDOW_LIMIT`), steal stayed under `STEAL_LIMIT`, nothing throttled and every spread
stayed under `SPREAD_LIMIT`; otherwise *UNRELIABLE* with the reasons. `wait_for_quiet` waits
(up to a limit) for a quiet machine before timing starts.
"""
from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field

#: other processes' CPU, averaged over the run, in cores (10 % of one core)
OTHER_CPU_LIMIT = 0.10
#: other processes' CPU in one window, in cores, above which the window is a burst of other work
OTHER_CPU_WINDOW_LIMIT = 0.50
#: bursts a quiet run may have: one or two windows of a compiler child we never saw (it lived and
#: ended between two samples, so its time looks like another process's) are not a busy machine
MAX_BURSTS = 2
#: steal time averaged over the run, in cores
STEAL_LIMIT = 0.05
#: (75th - 25th percentile) / median of a timed quantity's repeats: sub-millisecond calls on a quiet
#: machine spread by 4-10 % (timer and cache noise; bench.thread_stability), a waking thread by 100 %
#: and more
SPREAD_LIMIT = 0.10
#: the spread a headline figure (a geometric mean over many calls) may have: it summarises many
#: repeats, so it must be much steadier than one row
HEADLINE_SPREAD_LIMIT = 0.05
#: seconds between two samples of the monitor
WINDOW_S = 0.5

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat() -> tuple[float, float] | None:
    """(busy seconds, steal seconds) of all CPUs since boot; None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    values = [int(v) for v in fields[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = values[:7]
    steal = values[7] if len(values) > 7 else 0
    return (user + nice + system + irq + softirq) / _CLK_TCK, steal / _CLK_TCK


class _OwnCpu:
    """CPU seconds of this process and every descendant it has had, never decreasing.

    A descendant's time is remembered from the last time it was seen alive: when it ends, its CPU
    time leaves the live processes at once but reaches this process's waited-children counters only
    when its parent (which may be a child of ours) reaps it; subtracting a live sum from the
    machine's busy time would then count our own work as another process's. A descendant that
    lives and dies between two samples is not seen: its time counts as other (bounded by the
    sampling window)."""

    def __init__(self):
        self._seen: dict[tuple[int, float], float] = {}   # (pid, start time) -> CPU seconds
        self._alive: set[tuple[int, float]] = set()
        #: whether a descendant ended since the previous call: the window just measured misses up to
        #: its last interval of CPU time, which would look like another process's
        self.ended = False

    def __call__(self) -> float:
        try:
            import psutil
        except ImportError:  # this process and its waited-for children only
            t = os.times()
            return t.user + t.system + t.children_user + t.children_system
        me = psutil.Process()
        t = me.cpu_times()
        total = t.user + t.system
        try:
            children = me.children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        alive = set()
        for child in children:
            try:
                with child.oneshot():
                    c = child.cpu_times()
                    key = (child.pid, child.create_time())
                self._seen[key] = max(self._seen.get(key, 0.0), c.user + c.system)
                alive.add(key)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self.ended = bool(self._alive - alive)
        self._alive = alive
        return total + sum(self._seen.values())


def _self_and_reaped_cpu() -> float:
    """CPU seconds of this process and of the descendants it (and they, recursively) have reaped."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and its descendants as one snapshot (see `_OwnCpu`)."""
    return _OwnCpu()()


def _gpu_state() -> dict | None:
    """Other processes on GPU 0 and its throttle reasons (NVML); None without a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no GPU, no library
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        others = sorted({p.pid for p in procs} - {os.getpid()})
        state = {"other_gpu_processes": others}
        try:
            reasons = pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle)
        except Exception:  # noqa: BLE001 - older drivers name it ...ThrottleReasons
            reasons = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)
        benign = pynvml.nvmlClocksThrottleReasonGpuIdle | pynvml.nvmlClocksThrottleReasonApplicationsClocksSetting
        harmful = reasons & ~benign
        state["throttle_reasons"] = int(harmful)
        state["sm_clock_mhz"] = int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
        return state
    except Exception as err:  # noqa: BLE001
        return {"error": f"{type(err).__name__}: {err}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


@dataclass
class _Sample:
    wall: float
    busy: float
    steal: float
    own: float              # this process and every descendant seen (`_OwnCpu`)
    reaped: float           # this process and the descendants reaped so far (exact once reaped)
    ended: bool = False     # a descendant ended since the previous sample


def _sample(own: _OwnCpu | None = None) -> _Sample | None:
    stat = _proc_stat()
    if stat is None:
        return None
    own = own or _OwnCpu()
    value = own()
    return _Sample(time.monotonic(), stat[0], stat[1], value, _self_and_reaped_cpu(), own.ended)


def _rates(a: _Sample, b: _Sample) -> tuple[float, float]:
    """(other processes' CPU, steal) between two samples, in cores. Our CPU time is the larger of
    two views that each miss something: every descendant as last seen alive (misses a process's
    time after its last sample) and the reaped counters (miss what is still running)."""
    dt = max(b.wall - a.wall, 1e-6)
    ours = max(b.own - a.own, b.reaped - a.reaped)
    other = max((b.busy - a.busy) - ours, 0.0) / dt
    return other, max(b.steal - a.steal, 0.0) / dt


class MachineMonitor:
    """Records the machine's state while a block runs (see the module docstring)::

        with MachineMonitor("cpu op") as monitor:
            ... time things ...
        monitor.record   # JSON-ready dict: windows, means, maxima, load, GPU state
    """

    def __init__(self, name: str = "", interval: float = WINDOW_S, gpu: bool = False):
        self.name, self.interval, self.gpu = name, interval, gpu
        self.windows: list[tuple[float, float]] = []       # (other cores, steal cores) per window
        self.record: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "MachineMonitor":
        self._own = _OwnCpu()
        self._first = self._last = _sample(self._own)
        self._load_start = os.getloadavg()
        self._gpu_start = _gpu_state() if self.gpu else None
        if self._first is not None:
            self._thread = threading.Thread(target=self._run, name="bench-machine-monitor", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = _sample(self._own)
            if now is not None and self._last is not None:
                self.windows.append((*_rates(self._last, now), now.ended))
                self._last = now

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        end = _sample(self._own)
        record: dict = {"name": self.name, "load_average_start": list(self._load_start),
                        "load_average_end": list(os.getloadavg()), "cpu_count": os.cpu_count()}
        if self._first is not None and end is not None:
            other, steal = _rates(self._first, end)
            # a window in which one of our processes ended misses its last moments: not judged alone
            judged = [o for o, _, ended in self.windows if not ended]
            record.update(seconds=round(end.wall - self._first.wall, 3), other_cpu_cores=round(other, 4),
                          steal_cores=round(steal, 4),
                          other_cpu_cores_max_window=round(max(judged or [other]), 4),
                          bursts=sum(o > OTHER_CPU_WINDOW_LIMIT for o in judged),
                          windows=[[round(o, 3), round(s, 3), int(e)] for o, s, e in self.windows])
        else:
            record["unavailable"] = "/proc/stat cannot be read: the machine's state is unknown"
        if self.gpu:
            record["gpu_start"], record["gpu_end"] = self._gpu_start, _gpu_state()
        self.record = record
        return False


def machine_problems(record: dict) -> list[str]:
    """Why a monitor's record says the machine was not quiet (empty: it was)."""
    if "unavailable" in record:
        return [record["unavailable"]]
    problems = []
    other, peak = record["other_cpu_cores"], record["other_cpu_cores_max_window"]
    if other > OTHER_CPU_LIMIT:
        problems.append(f"busy machine: other processes used {other:.0%} of a core on average "
                        f"(limit {OTHER_CPU_LIMIT:.0%})")
    elif record.get("bursts", 0) > MAX_BURSTS:
        problems.append(f"busy machine: other processes used more than {OTHER_CPU_WINDOW_LIMIT:.0%} of a core in "
                        f"{record['bursts']} windows of {WINDOW_S} s (at most {MAX_BURSTS} allowed; the largest "
                        f"{peak:.0%})")
    if record["steal_cores"] > STEAL_LIMIT:
        problems.append(f"steal time: the hypervisor took {record['steal_cores']:.0%} of a core "
                        f"(limit {STEAL_LIMIT:.0%})")
    for key in ("gpu_start", "gpu_end"):
        gpu = record.get(key) or {}
        if gpu.get("other_gpu_processes"):
            problems.append(f"other processes on the GPU: {gpu['other_gpu_processes']}")
        if gpu.get("throttle_reasons"):
            problems.append(f"GPU clocks throttled (NVML reasons {gpu['throttle_reasons']:#x})")
    return list(dict.fromkeys(problems))


# ----------------------------------------------------------------------------- repeats

@dataclass
class Timings:
    """Every repeat of one timed quantity, in seconds."""

    samples: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.samples.append(float(seconds))

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def spread(self) -> float | None:
        """(75th - 25th percentile) / median; None with fewer than four repeats (no quartiles)."""
        if len(self.samples) < 4:
            return None
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return (q[2] - q[0]) / self.median if self.median > 0 else None

    @property
    def stable(self) -> bool:
        """Whether the repeats agree: spread within `SPREAD_LIMIT`; with too few repeats for a
        spread, max/min within the same bound."""
        if self.spread is not None:
            return self.spread <= SPREAD_LIMIT
        return len(self.samples) > 1 and max(self.samples) / self.min - 1 <= SPREAD_LIMIT

    def as_dict(self) -> dict:
        return {"median_s": self.median, "min_s": self.min, "spread": self.spread, "stable": self.stable,
                "repeats": len(self.samples), "times_s": self.samples}


#: a repeat shorter than this is timed as several calls in a row (the timer's and the machine's
#: noise on a 20 µs call is larger than the call)
MIN_SAMPLE_S = 0.01


def paired_ratios(numerator: Timings, denominator: Timings) -> Timings:
    """The ratio of each interleaved repeat pair (a speedup per repeat). A drift of the machine
    that slows both sides of a pair cancels here, so this spread, not each side's, says whether a
    ratio holds."""
    return Timings([a / b for a, b in zip(numerator.samples, denominator.samples)])


def geomean_spread(rows: list[list[float]], weights: list[float], draws: int = 400, seed: int = 0) -> float:
    """The spread (IQR / median) of a weighted geometric mean of per-row medians, by the bootstrap:
    each draw resamples every row's per-repeat values and takes the geometric mean of the
    resampled medians. How much the headline figure would move if the run were repeated."""
    import math
    import random

    rng = random.Random(seed)
    total = sum(weights)
    means = []
    for _ in range(draws):
        log_sum = 0.0
        for values, w in zip(rows, weights):
            resampled = [values[rng.randrange(len(values))] for _ in values]
            log_sum += w * math.log(statistics.median(resampled))
        means.append(math.exp(log_sum / total))
    q = statistics.quantiles(means, n=4, method="inclusive")
    return (q[2] - q[0]) / statistics.median(means)


def interleaved(runs: dict, repeats: int, warmup: int = 1, sync=None) -> dict[str, Timings]:
    """Times every function of `runs` ({name: fn}) `repeats` times, interleaved (A B A B ...),
    after `warmup` calls of each: a drift of the machine hits every side alike. A function whose
    call takes less than `MIN_SAMPLE_S` is called several times per repeat; the repeat records the
    time per call."""
    sync = sync or (lambda: None)
    inner = {}
    for name, fn in runs.items():
        for _ in range(warmup):
            fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        inner[name] = max(1, int(MIN_SAMPLE_S / max(time.perf_counter() - t0, 1e-9)))
    out = {name: Timings() for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            sync()
            out[name].add((time.perf_counter() - t0) / inner[name])
    return out


def repeats_for(fn, budget_s: float, min_repeats: int = 5, max_repeats: int = 50) -> int:
    """How many repeats of fn fit the budget (one call timed; at least `min_repeats`, enough for
    quartiles)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    return int(min(max_repeats, max(min_repeats, budget_s / max(first, 1e-9))))


# ----------------------------------------------------------------------------- verdict

def judge(machine_records: list[dict], unstable: list[str]) -> dict:
    """The run's verdict from its monitors' records and the names of its unstable quantities:
    {"quiet": bool, "reasons": [...]}."""
    reasons = []
    for record in machine_records:
        for problem in machine_problems(record):
            reasons.append(f"{record.get('name') or 'a job'}: {problem}")
    if unstable:
        shown = ", ".join(unstable[:5]) + (f" and {len(unstable) - 5} more" if len(unstable) > 5 else "")
        reasons.append(f"spread above the limit (IQR / median; {SPREAD_LIMIT:.0%} for a speedup's repeats, "
                       f"{HEADLINE_SPREAD_LIMIT:.0%} for a geometric mean's bootstrap) in {len(unstable)} headline "
                       f"figures: {shown}")
    return {"quiet": not reasons, "reasons": reasons,
            "limits": {"other_cpu_cores": OTHER_CPU_LIMIT, "other_cpu_cores_window": OTHER_CPU_WINDOW_LIMIT,
                       "max_bursts": MAX_BURSTS,
                       "steal_cores": STEAL_LIMIT, "spread": SPREAD_LIMIT, "headline_spread": HEADLINE_SPREAD_LIMIT,
                       "window_s": WINDOW_S}}


def wait_for_quiet(max_wait_s: float, window_s: float = 3.0, say=print) -> dict:
    """Waits until other processes used at most `OTHER_CPU_LIMIT` of a core over one window of
    `window_s` seconds, or `max_wait_s` have passed; says what it waits for. Returns
    {"quiet": bool, "waited_s": float, "other_cpu_cores": last window's figure}."""
    start = time.monotonic()
    said = False
    while True:
        a = _sample()
        if a is None:
            return {"quiet": False, "waited_s": 0.0, "other_cpu_cores": None}
        time.sleep(window_s)
        b = _sample()
        other, steal = _rates(a, b)
        waited = time.monotonic() - start
        if other <= OTHER_CPU_LIMIT and steal <= STEAL_LIMIT:
            if said:
                say(f"bench: the machine is quiet after {waited:.0f} s")
            return {"quiet": True, "waited_s": round(waited, 1), "other_cpu_cores": round(other, 3)}
        if waited >= max_wait_s:
            say(f"bench: gave up waiting after {waited:.0f} s: other processes still use {other:.0%} of a core; "
                "timing anyway, and the report will say UNRELIABLE")
            return {"quiet": False, "waited_s": round(waited, 1), "other_cpu_cores": round(other, 3)}
        say(f"bench: waiting for a quiet machine: other processes use {other:.0%} of a core "
            f"(waiting for at most {OTHER_CPU_LIMIT:.0%}; {max_wait_s - waited:.0f} s left)")
        said = True
