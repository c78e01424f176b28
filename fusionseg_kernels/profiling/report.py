"""Profiles written and shown: the per-case table (CSV, Markdown), the curves, one-line summaries."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from fusionseg_kernels import atomic


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


def one_line(r: dict) -> str:
    """A profile in one line: time, max and area of the memory curve, samples, exit status."""
    peak = "-" if r["max_mem_mb"] is None else f"{r['max_mem_mb']:.0f}"
    mean = "-" if r["mean_interval_s"] is None else f"{r['mean_interval_s']:.3f}"
    kind = memory_label(r["source"])
    return (f"time {r['time_s']:.2f} s, max {kind} {peak} MB, total {kind} {r['auc_mb_s']:.1f} MB·s, "
            f"{r['samples']} samples (mean interval {mean} s), exit status {r['exit_status']}")
