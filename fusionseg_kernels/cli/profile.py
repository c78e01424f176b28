"""``fusionseg profile``: wall time and memory-time curve of a command, as FLARE measures it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .arguments import non_negative_int, positive_float


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "profile", help="time and memory-time curve of a command (GPU through NVML, else RSS), as FLARE measures",
        description="Runs COMMAND while a background thread samples memory every --interval seconds: the whole "
                    "GPU's used memory through NVML, or without a GPU the resident memory of the command's "
                    "process tree. Reports wall time, max MB, total MB·s (sum of samples × interval) and the "
                    "curve; the command's exit status is passed through. --per-case runs COMMAND once per "
                    "<case>_0000.nii.gz of -i, {input} replaced by a folder holding only that case and {output} "
                    "by -o.")
    p.add_argument("--json", type=Path, help="write the profile here (--per-case: also .csv, .md and "
                   "_curves.csv beside it; default OUTPUT/profile.json)")
    p.add_argument("--interval", type=positive_float, default=0.1,
                   help="seconds between samples, finite and positive (default 0.1)")
    p.add_argument("--device-index", type=non_negative_int, default=0, help="NVML index of the GPU (default 0)")
    p.add_argument("--source", choices=("auto", "nvml", "rss"), default="auto",
                   help="auto (default): NVML when it works, else RSS")
    p.add_argument("--per-case", action="store_true", help="FLARE's protocol: one run per case")
    p.add_argument("-i", "--input", type=Path, help="--per-case: folder of <case>_0000.nii.gz images")
    p.add_argument("-o", "--output", type=Path, help="--per-case: output folder ({output})")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND", help="-- COMMAND ...")
    p.set_defaults(run=lambda args: run(args, p))


def run(args, parser: argparse.ArgumentParser) -> int:
    from fusionseg_kernels import profiling

    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("give the command to profile after `--`")
    if not args.per_case:
        if args.input is not None or args.output is not None:
            parser.error("-i/-o belong to --per-case")
        result = profiling.profile_command(command, args.interval, args.device_index, args.source)
        print(f"fusionseg profile: {profiling.one_line(result)}; {result['device']}", file=sys.stderr)
        if args.json:
            profiling.write_json(args.json, result)
        return result["exit_status"]
    if args.input is None or args.output is None:
        parser.error("--per-case needs -i INPUT_FOLDER and -o OUTPUT_FOLDER")

    def progress(r):
        print(f"fusionseg profile: {r['case']}: {profiling.one_line(r)}", file=sys.stderr, flush=True)

    result = profiling.profile_cases(command, args.input, args.output, args.interval, args.device_index,
                                     args.source, progress=progress)
    json_path = args.json or Path(args.output) / "profile.json"
    paths = profiling.write_case_files(result, json_path)
    print(f"fusionseg profile: {result['summary']['cases']} cases on {result['summary']['device']}; "
          f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    failed = [r for r in result["cases"] if r["exit_status"] != 0]
    return failed[0]["exit_status"] if failed else 0
