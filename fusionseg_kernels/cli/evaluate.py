"""``fusionseg evaluate``: DSC and NSD of predicted lesion masks, scored as FLARE task 1 does."""
from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="DSC and NSD (2 mm) of predicted lesion masks, scored as FLARE task 1 does",
        description="Scores every <case>.nii.gz of --gt against the file of the same name in --pred: DSC "
                    "and NSD at 2 mm (DeepMind surface-distance, ground-truth spacing), labels above 1 "
                    "score 0, both empty 1, one empty 0, NSD 0 when DSC < 0.2. Writes case,dsc,nsd,note "
                    "and prints the means; a case without prediction counts as 0. See "
                    "docs/data_and_evaluation.md.")
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted masks <case>.nii.gz")
    p.add_argument("--gt", required=True, type=Path, help="folder of ground-truth masks <case>.nii.gz")
    p.add_argument("-o", "--output", required=True, type=Path, help="CSV file to write")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-case lines (warnings and means only)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a prediction whose spacing, origin or direction differs from its ground truth's "
                        "(default: score it on the ground truth's grid, as FLARE does, with a warning)")
    p.set_defaults(run=run)


def run(args) -> int:
    from fusionseg_kernels.errors import OutputFolderError
    from fusionseg_kernels.evaluation import NOTE_NO_GT, NOTE_NO_PRED, evaluate_folders, summarize, write_csv

    if args.output.is_dir():
        raise OutputFolderError(f"the output {args.output} is a folder; give a .csv file name.")

    def show(row):
        if row.get("geometry"):
            print(f"warning: {row['case']}: {row['geometry']}", file=sys.stderr)
        if row["note"] == NOTE_NO_GT:
            print(f"warning: {row['case']}.nii.gz in {args.pred} has no ground truth in {args.gt} "
                  f"(listed, not scored)", file=sys.stderr)
        elif row["note"] == NOTE_NO_PRED:
            print(f"warning: {row['case']}.nii.gz in {args.gt} has no prediction in {args.pred} "
                  f"(counted as DSC 0, NSD 0)", file=sys.stderr)
        elif not args.quiet:
            print(f"{row['case']}  DSC {row['dsc']:.4f}  NSD {row['nsd']:.4f}"
                  + (f"  ({row['note']})" if row["note"] else ""))

    rows = evaluate_folders(args.pred, args.gt, progress=show, strict=args.strict)
    write_csv(rows, args.output)
    s = summarize(rows)
    extra = []
    if s["missing_predictions"]:
        extra.append(f"{len(s['missing_predictions'])} without a prediction counted as 0")
    if s["missing_ground_truth"]:
        extra.append(f"{len(s['missing_ground_truth'])} predictions without ground truth not scored")
    print(f"mean DSC {s['mean_dsc']:.4f}  mean NSD {s['mean_nsd']:.4f}  over {s['n']} cases"
          + (f" ({'; '.join(extra)})" if extra else ""))
    print(f"wrote {args.output}")
    return 0
