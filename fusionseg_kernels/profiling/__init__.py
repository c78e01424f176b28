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

from .per_case import profile_cases, summarize_cases
from .report import case_table, memory_label, one_line, write_case_files, write_json
from .sampler import DEFAULT_INTERVAL_S, MemorySampler, exit_status, profile_command, profile_memory, summarize
from .sources import MB, MemorySource, NvmlSource, ProcessTreeRssSource, open_source

__all__ = ["DEFAULT_INTERVAL_S", "MB", "MemorySampler", "MemorySource", "NvmlSource", "ProcessTreeRssSource",
           "case_table", "exit_status", "memory_label", "one_line", "open_source", "profile_cases", "profile_command",
           "profile_memory", "summarize", "summarize_cases", "write_case_files", "write_json"]
