"""``fusionseg predict``: the command-line front end of `Predictor`."""
from __future__ import annotations

import argparse
import os
import sys

from .malloc import keep_freed_memory


def run_predict(args: argparse.Namespace) -> int:
    """Exit status: 0 when every case was segmented, 1 when any failed, 130 when interrupted.
    Errors that stop the whole run (model folder, output folder, device) raise `FusionsegError`."""
    allocator = keep_freed_memory(not args.no_keep_freed_memory)
    # fewer, growable CUDA segments: less reserved-but-unused device memory (read at the first
    # CUDA allocation, so setting it here is in time)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

    import torch

    from fusionseg_kernels.errors import ParameterError

    from . import io
    from .predict import PredictOptions, Predictor, format_timings, timings_document

    if args.threads is not None:
        if args.threads < 1:
            raise ParameterError(f"--threads must be at least 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    if not 0 < args.step <= 1:
        raise ParameterError(f"--step must be in (0, 1], got {args.step}.")
    sources = io.list_inputs(args.input)
    io.prepare_output_folder(args.output)
    options = PredictOptions(device=args.device, backend=args.backend, mode=args.mode, folds=args.folds,
                             tta=args.tta, step=args.step, quiet=args.quiet, precision=args.precision)
    predictor = Predictor(args.model, options)
    results = predictor.predict_paths(sources, args.output,
                                      report=lambda line: print(f"fusionseg predict: {line}", file=sys.stderr))
    if args.timings is not None:
        io.write_json_atomic(timings_document(results, predictor, allocator), args.timings)
    if not args.quiet:
        print(format_timings(results))
    failed = [r for r in results if r.status != "ok"]
    done = len(results) - len(failed)
    if any(r.status == "interrupted" for r in results):
        print(f"fusionseg predict: interrupted after {done} of {len(sources)} case(s)", file=sys.stderr)
        return 130
    if failed:
        print(f"fusionseg predict: {len(failed)} of {len(sources)} case(s) failed: "
              f"{', '.join(r.case for r in failed)}", file=sys.stderr)
        return 1
    return 0
