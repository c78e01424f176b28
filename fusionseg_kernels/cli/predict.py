"""``fusionseg predict``: whole-CT inference with an nnU-Net model folder."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .arguments import non_negative_int, positive_int, threads, tile_step


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="segment CT volumes with an nnU-Net model folder (one uint8 mask per case)",
        description="Segments a CT file or every image of a folder (.nii.gz, .nii, .mha, .mhd, .nrrd, .nhdr) "
                    "with the network of an nnU-Net v2 model folder and writes one mask per case with the "
                    "input's geometry; <case>_0000.nii.gz becomes <case>.nii.gz. --mode exact reproduces "
                    "nnU-Net v2's predictor (needs nnunetv2); --mode fast (default) preprocesses on the "
                    "device and takes the argmax at network resolution. See docs/inference.md.")
    p.add_argument("-i", "--input", required=True, type=Path, help="an image file or a folder of images")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (created if needed)")
    p.add_argument("-m", "--model", required=True, type=Path,
                   help="nnU-Net model folder: plans.json, dataset.json, fold_*/checkpoint_final.pth")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto (default): cuda when a GPU is available")
    p.add_argument("--backend", choices=("auto", "reference", "cpu", "cuda", "triton"), default="auto",
                   help="InceptionDWConv3d backend (default auto)")
    p.add_argument("--mode", choices=("exact", "fast"), default="fast", help="default fast")
    p.add_argument("-f", "--folds", nargs="+", help="folds to use (default: every fold_N with a checkpoint)")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (up to 8 passes per tile)")
    p.add_argument("--step", type=tile_step, default=0.5, help="tile step as a fraction of the patch (default 0.5)")
    p.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16",
                   help="fast mode on a GPU: autocast dtype (default fp16)")
    p.add_argument("--threads", type=threads, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-keep-freed-memory", action="store_true",
                   help="leave glibc's malloc thresholds alone (default: keep freed memory for reuse)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no timing table")
    p.add_argument("--timings", type=Path, metavar="FILE", help="write per-case stage times as JSON")
    p.add_argument("--replace-non-finite", type=float, metavar="HU",
                   help="segment images holding NaN or infinite voxels with those voxels set to HU "
                        "(default: such images are refused)")
    p.add_argument("--num-parts", type=positive_int, default=1, metavar="N",
                   help="split the cases into N parts (as nnUNetv2_predict does: every N-th case of the sorted "
                        "list) and segment only one of them (default 1: all cases)")
    p.add_argument("--part-id", type=non_negative_int, default=0, metavar="I",
                   help="which part this process segments, 0 to N-1 (default 0); run N processes, one per "
                        "GPU or node, with I = 0 ... N-1")
    p.set_defaults(run=run)


def run(args) -> int:
    """Exit status: 0 when every case was segmented, 1 when any failed, 130 when interrupted.
    Errors that stop the whole run (model folder, output folder, device) raise `FusionsegError`."""
    from fusionseg_kernels import atomic, config
    from fusionseg_kernels.inference.malloc import keep_freed_memory

    allocator = keep_freed_memory(not args.no_keep_freed_memory)
    # fewer, growable CUDA segments: less reserved-but-unused device memory (read at the first
    # CUDA allocation, so setting it here is in time)
    config.set_default("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

    from fusionseg_kernels import imageio
    from fusionseg_kernels.errors import ParameterError
    from fusionseg_kernels.inference.reading import start_reading

    process = {"command_started": time.time()}
    sources = imageio.list_inputs(args.input)
    # every refusal before anything is read, loaded or created
    plan = imageio.plan_outputs(sources, args.output, args.input if args.input.is_dir() else None)
    imageio.check_output_folder(args.output)
    if args.part_id >= args.num_parts:
        raise ParameterError(f"--part-id {args.part_id} is not one of the {args.num_parts} parts: it counts from 0 "
                             f"to {args.num_parts - 1}.")
    # nnU-Net's split: the cases are sorted, part I takes cases I, I + N, I + 2N, ...
    plan = plan[args.part_id::args.num_parts]
    # the first case is read on a thread while torch imports and the model loads
    first = start_reading(plan[0][0]) if plan else None

    from fusionseg_kernels.inference.predict import PredictOptions, Predictor, format_timings, timings_document

    process["torch_imported"] = time.time()
    options = PredictOptions(device=args.device, backend=args.backend, mode=args.mode, folds=args.folds,
                             tta=args.tta, step=args.step, quiet=args.quiet, precision=args.precision,
                             threads=args.threads, replace_non_finite=args.replace_non_finite)
    predictor = Predictor(args.model, options)
    process["model_loaded"] = time.time()
    results = predictor.predict_plan(plan, report=lambda line: print(f"fusionseg predict: {line}", file=sys.stderr),
                                     first=first)
    process["cases_done"] = time.time()
    if args.timings is not None:
        atomic.write_json(args.timings, timings_document(results, predictor, allocator, process))
    if not args.quiet:
        print(format_timings(results))
    failed = [r for r in results if r.status != "ok"]
    done = len(results) - len(failed)
    sources = [src for src, _ in plan]
    if any(r.status == "interrupted" for r in results):
        print(f"fusionseg predict: interrupted after {done} of {len(sources)} case(s)", file=sys.stderr)
        return 130
    if failed:
        print(f"fusionseg predict: {len(failed)} of {len(sources)} case(s) failed: "
              f"{', '.join(r.case for r in failed)}", file=sys.stderr)
        return 1
    return 0
