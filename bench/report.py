"""The benchmark report: report.md and plots/*.png from a results.json written by bench/run.py.

    python -m bench.report REPORT_DIR                 # regenerate REPORT_DIR/report.md and plots/
    python -m bench.report --results FILE --out DIR   # from a results.json elsewhere
    python -m bench.report --readme-sample FILE       # README.md's sample from a quiet run's results.json

Sections (each only when its results are present): the op benchmark (every measured backend
against `reference` and torch.compile(reference)), the static GPU report (predicted bandwidth
fractions from bench/gpu_static.py), the network comparison, the complexity table and the FLARE
efficiency profile of `fusionseg predict`. Plots use matplotlib's Agg backend (no display).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.harness import write_atomic
from bench.machine import HEADLINE_SPREAD_LIMIT, SPREAD_LIMIT

MODES = {"fwd": "forward", "fwdbwd": "forward+backward"}


# ----------------------------------------------------------------------------- helpers

def table(head, rows) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
           ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def shape_label(shape) -> str:
    return "×".join(str(s) for s in shape[1:])  # C×D×H×W (the batch is in the section text)


def mb(v) -> str:
    return f"{v:.1f}" if v >= 1 else f"{v:.3f}"


def fmt(v, spec=".2f", none="-"):
    return none if v is None else format(v, spec)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    write_atomic(path, buf.getvalue())
    return path


# ----------------------------------------------------------------------------- op: CPU

UNSTABLE_MARK = " ⚠"


def mark(stable) -> str:
    """The mark of a figure whose repeats disagree (spread above the limit) or whose run was not
    quiet: the reader must never see such a ratio without it."""
    return "" if stable is not False else UNSTABLE_MARK


def cpu_op_section(data: dict, plots: Path, one_thread: dict | None = None,
                   run_quiet: bool = True) -> tuple[list[str], list[Path]]:
    providers = data["providers"]
    fused = [p for p in providers if p != "reference"]
    dram = data["dram_copy"]
    rows = data["results"]
    out = [f"CPU, float32, batch 1, {data['environment']['threads']} threads; the network's "
           f"{data['summary']['calls']} calls (identical shapes timed once, weighted by their count in the "
           f"geometric means). Providers: {', '.join(providers)} (`compile` = torch.compile(reference)). "
           "Medians of interleaved repeats (every provider in turn); ⚠ marks a row whose speedups (the ratios of "
           f"the interleaved pairs) spread by more than {SPREAD_LIMIT:.0%} (IQR / median), or any row of a run that "
           "was not quiet.", ""]
    head = ["shape (C×D×H×W)", "calls", "x MB", "reference fwd ms"] + [f"{p} fwd ms (speedup)" for p in fused]
    head += ["reference fwd+bwd ms"] + [f"{p} fwd+bwd ms (speedup)" for p in fused]
    body = []
    for r in rows:
        t, s = r["times_s"], r["speedup"]
        m = mark(r.get("stable", True) and run_quiet)
        cells = [shape_label(r["shape"]) + m, r["calls"], mb(r["x_MB"]), f"{t['reference']['fwd'] * 1e3:.2f}"]
        cells += [f"{t[p]['fwd'] * 1e3:.2f} ({s[p]['fwd']:.2f}x{m})" for p in fused]
        cells += [f"{t['reference']['fwdbwd'] * 1e3:.1f}"]
        cells += [f"{t[p]['fwdbwd'] * 1e3:.1f} ({s[p]['fwdbwd']:.2f}x{m})" for p in fused]
        body.append(cells)
    out += table(head, body) + [""]
    spreads = data["summary"].get("geomean_speedup_spread", {})
    for p, g in data["summary"]["geomean_speedup"].items():
        sp = spreads.get(p, {})
        cells = [f"{MODES[m]} **{g[m]:.2f}x**{mark(run_quiet and sp.get(m, 0) <= HEADLINE_SPREAD_LIMIT)}"
                 + (f" (bootstrap spread {sp[m]:.1%})" if m in sp else "") for m in ("fwd", "fwdbwd")]
        out.append(f"- geometric mean speedup of `{p}` over `reference`: {', '.join(cells)}")
    unstable_rows = sum(not r.get("stable", True) for r in rows)
    out.append(f"- rows whose speedups spread above {SPREAD_LIMIT:.0%} over the repeats (marked ⚠): "
               f"{unstable_rows} of {len(rows)}; a geometric mean is marked when its bootstrap spread is above "
               f"{HEADLINE_SPREAD_LIMIT:.0%}")
    if "largest_cpu_fwd_over_clone" in data["summary"]:
        out.append(f"- largest call ({shape_label(data['summary']['largest_shape'])}): fused forward = "
                   f"{data['summary']['largest_cpu_fwd_over_clone']:.2f}x the time of `x.clone()`")
    out += ["", f"Bandwidth (bytes read + written by the roofline: 2·|x| forward, 4.5·|x| forward+backward) "
            f"against a memory copy of {dram['bytes_per_s'] / 1e9:.1f} GB/s measured in the same run on "
            f"{dram['buffer_bytes'] / 2**20:.0f} MiB buffers (last-level cache "
            f"{dram['last_level_cache_bytes'] / 2**20:.0f} MiB). Calls whose roofline bytes fit that cache "
            "run from cache on a warm repeat: no fraction of a memory copy is given for them.", ""]
    head = ["shape (C×D×H×W)", "x MB", "copy on this size GB/s"]
    head += [f"{p} {m} GB/s (of memory copy)" for p in providers for m in ("fwd", "fwd+bwd")]
    body = []
    for r in rows:
        cells = [shape_label(r["shape"]), mb(r["x_MB"]), f"{r['copy_same_size_GBps']:.1f}"]
        for p in providers:
            for m in ("fwd", "fwdbwd"):
                frac = r["fraction_of_dram_copy"][p][m]
                cells.append(f"{r['bandwidth_GBps'][p][m]:.1f} "
                             f"({'cache-resident' if frac is None else format(frac, '.0%')})")
        body.append(cells)
    out += table(head, body)
    if one_thread:
        out += ["", "The same calls with **one thread** (reference and the fused kernel; a one-thread figure "
                "does not depend on waking a second thread, so it is the steadier of the two):", ""]
        body = []
        for r in one_thread["results"]:
            t, s = r["times_s"], r["speedup"]
            m = mark(r.get("stable", True) and run_quiet)
            body.append([shape_label(r["shape"]) + m, r["calls"], f"{t['reference']['fwd'] * 1e3:.2f}",
                         f"{t['cpu']['fwd'] * 1e3:.2f} ({s['cpu']['fwd']:.2f}x{m})",
                         f"{t['reference']['fwdbwd'] * 1e3:.1f}",
                         f"{t['cpu']['fwdbwd'] * 1e3:.1f} ({s['cpu']['fwdbwd']:.2f}x{m})"])
        out += table(["shape (C×D×H×W)", "calls", "reference fwd ms", "cpu fwd ms (speedup)",
                      "reference fwd+bwd ms", "cpu fwd+bwd ms (speedup)"], body) + [""]
        g = one_thread["summary"]["geomean_speedup"]["cpu"]
        sp = one_thread["summary"].get("geomean_speedup_spread", {}).get("cpu", {})
        cells = [f"{MODES[m]} **{g[m]:.2f}x**{mark(run_quiet and sp.get(m, 0) <= HEADLINE_SPREAD_LIMIT)}"
                 + (f" (bootstrap spread {sp[m]:.1%})" if m in sp else "") for m in ("fwd", "fwdbwd")]
        out.append(f"- one thread, geometric mean speedup of `cpu` over `reference`: {', '.join(cells)}")
    figs = [plot_cpu_speedup(data, plots / "op_speedup.png", run_quiet),
            plot_cpu_roofline(data, plots / "op_roofline.png")]
    return out, figs


def plot_cpu_speedup(data, path, run_quiet: bool = True):
    plt = _pyplot()
    rows = data["results"]
    fused = [p for p in data["providers"] if p != "reference"]
    labels = [shape_label(r["shape"]) for r in rows]
    series = [(p, m) for p in fused for m in ("fwd", "fwdbwd")]
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(rows) + 2), 4))
    width = 0.8 / max(1, len(series))
    for i, (p, m) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
        bars = ax.bar(xs, [r["speedup"][p][m] for r in rows], width, label=f"{p} {MODES[m]}")
        for bar, r in zip(bars, rows):  # unreliable figures hatched, never shown plain
            if not (run_quiet and r.get("stable", True)):
                bar.set_hatch("///")
                bar.set_alpha(0.5)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), [lb + mark(run_quiet and r.get("stable", True)) for lb, r in zip(labels, rows)],
                  rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("speedup over reference (log)")
    title = f"InceptionDWConv3d speedup per layer shape — {data['environment']['device']}"
    if not run_quiet or not all(r.get("stable", True) for r in rows):
        title = f"UNRELIABLE (hatched: spread > {SPREAD_LIMIT:.0%} or a busy machine) — " + title
    ax.set_title(title, fontsize=9, color="black" if "UNRELIABLE" not in title else "darkred")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_cpu_roofline(data, path):
    plt = _pyplot()
    rows = data["results"]
    dram = data["dram_copy"]
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, p in enumerate(data["providers"]):
        for m, marker in (("fwd", "o"), ("fwdbwd", "s")):
            ax.plot([r["x_MB"] for r in rows], [r["bandwidth_GBps"][p][m] for r in rows], marker,
                    color=colors[i % len(colors)], mfc="none" if m == "fwdbwd" else None, label=f"{p} {MODES[m]}")
    ax.axhline(dram["bytes_per_s"] / 1e9, color="black", ls="--", lw=1,
               label=f"memory copy {dram['bytes_per_s'] / 1e9:.1f} GB/s")
    llc_mb = dram["last_level_cache_bytes"] / 1e6
    ax.axvspan(min(r["x_MB"] for r in rows) * 0.8, llc_mb / 2, color="grey", alpha=0.15,
               label="forward cache-resident (2|x| ≤ LLC)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|x| MB")
    ax.set_ylabel("GB/s (roofline bytes / time)")
    ax.set_title("Bandwidth against the memory-copy roofline (CPU)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- op: GPU

def gpu_op_section(data: dict, plots: Path, run_quiet: bool = True) -> tuple[list[str], list[Path]]:
    meta = data["meta"]
    rows = [r for r in data["rows"] if "ms" in r]
    providers = data["providers"]
    out = [f"{meta['device_name']}, batch {data['batch']}; providers {', '.join(providers)} (`compile` = "
           f"torch.compile(reference)); device-to-device copy {data['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s "
           "(read + write) in the same run. Cells: ms (speedup over reference, fraction of copy bandwidth).", ""]
    for dtype in sorted({r["dtype"] for r in rows}):
        for mode in ("fwd", "fwdbwd"):
            sel = [r for r in rows if r["dtype"] == dtype and r["mode"] == mode]
            if not sel:
                continue
            shapes = []
            for r in sel:
                if r["shape"] not in shapes:
                    shapes.append(r["shape"])
            out += [f"**{dtype}, {MODES[mode]}**", ""]
            body = []
            for shape in shapes:
                cells = [shape_label(shape), next(r["calls"] for r in sel if r["shape"] == shape)]
                for p in providers:
                    r = next((r for r in sel if r["shape"] == shape and r["provider"] == p), None)
                    m = "" if r is None else mark(run_quiet and r.get("stable", True))
                    cells.append("-" if r is None else f"{r['ms']:.3f} ({fmt(r.get('speedup_vs_reference'))}x{m}, "
                                 f"{r['fraction_of_copy']:.0%})" + ("" if r.get("ok") else " WRONG"))
                body.append(cells)
            out += table(["shape (C×D×H×W)", "calls"] + providers, body) + [""]
    out.append("Geometric means over the calls (per call):")
    out.append("")
    def stable(dtype, mode):
        return run_quiet and all(r.get("stable", True) for r in rows if (r["dtype"], r["mode"]) == (dtype, mode))

    body = [[s["dtype"], MODES[s["mode"]], s["provider"],
             fmt(s.get("geomean_speedup_per_call")) + mark(stable(s["dtype"], s["mode"])),
             s.get("calls_slower_than_reference", "-"), s["all_ok"]]
            for s in data["summary"] if s["provider"] != "reference"]
    out += table(["dtype", "mode", "provider", "geomean speedup", "calls slower than reference", "all correct"], body)
    return out, [plot_gpu_speedup(data, plots / "op_speedup.png"), plot_gpu_roofline(data, plots / "op_roofline.png")]


def plot_gpu_speedup(data, path):
    plt = _pyplot()
    rows = [r for r in data["rows"] if "ms" in r and r["provider"] != "reference"]
    dtypes = sorted({r["dtype"] for r in rows}) or ["-"]
    fig, axes = plt.subplots(len(dtypes), 1, figsize=(9, 3.2 * len(dtypes)), squeeze=False)
    for ax, dtype in zip(axes[:, 0], dtypes):
        sel = [r for r in rows if r["dtype"] == dtype]
        shapes = []
        for r in sel:
            if r["shape"] not in shapes:
                shapes.append(r["shape"])
        series = sorted({(r["provider"], r["mode"]) for r in sel})
        width = 0.8 / max(1, len(series))
        for i, (p, m) in enumerate(series):
            pts = [(shapes.index(r["shape"]), r["speedup_vs_reference"]) for r in sel
                   if (r["provider"], r["mode"]) == (p, m) and r.get("speedup_vs_reference")]
            ax.bar([j + (i - (len(series) - 1) / 2) * width for j, _ in pts], [v for _, v in pts], width,
                   label=f"{p} {MODES[m]}")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(shapes)), [shape_label(s) for s in shapes], rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{dtype}: speedup over reference — {data['meta']['device_name']}", fontsize=9)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_gpu_roofline(data, path):
    plt = _pyplot()
    rows = [r for r in data["rows"] if "ms" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in sorted({(r["provider"], r["dtype"], r["mode"]) for r in rows}):
        sel = [r for r in rows if (r["provider"], r["dtype"], r["mode"]) == key]
        ax.plot([r["x_bytes"] / 1e6 for r in sel], [r["bandwidth_gbs"] for r in sel], "o" if key[2] == "fwd" else "s",
                label=" ".join(key), ms=4)
    ax.axhline(data["copy_bandwidth_bytes_per_s"] / 1e9, color="black", ls="--", lw=1, label="device copy")
    ax.set_xscale("log")
    ax.set_xlabel("|x| MB")
    ax.set_ylabel("GB/s (roofline bytes / time)")
    ax.set_title("Achieved bandwidth against the copy roofline (GPU)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- static GPU report

def gpu_static_section(data: dict, plots: Path) -> tuple[list[str], list[Path]]:
    preds = data.get("predictions", [])
    out = ["Predictions of bench/gpu_static.py (compiled kernels' resources and a bandwidth model; **not "
           f"measurements**): {len(data.get('kernels', []))} compiled kernels, {len(preds)} predictions.", ""]
    body = [[p["backend"], p["arch"], p["dtype"], shape_label(p["shape"]), f"{p['x_bytes'] / 1e6:.1f}",
             p["direction"], fmt(p.get("predicted_fraction"), ".0%")] for p in preds]
    out += table(["backend", "arch", "dtype", "shape (C×D×H×W)", "x MB", "direction",
                  "predicted fraction of DRAM bandwidth"], body)
    figs = [plot_gpu_static(data, plots / "gpu_static_roofline.png")] if preds else []
    return out, figs


def plot_gpu_static(data, path):
    plt = _pyplot()
    preds = [p for p in data["predictions"] if p.get("predicted_fraction") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in sorted({(p["backend"], p["arch"], p["direction"]) for p in preds}):
        sel = sorted((p for p in preds if (p["backend"], p["arch"], p["direction"]) == key), key=lambda p: p["x_bytes"])
        ax.plot([p["x_bytes"] / 1e6 for p in sel], [100 * p["predicted_fraction"] for p in sel], "o-",
                label=" ".join(key), ms=3)
    ax.axhline(100, color="black", ls="--", lw=1, label="roofline (DRAM bandwidth)")
    ax.set_xscale("log")
    ax.set_xlabel("|x| MB")
    ax.set_ylabel("predicted % of DRAM bandwidth")
    ax.set_title("Statically predicted bandwidth against the roofline (no GPU measured)", fontsize=9)
    ax.legend(fontsize=6)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- network

def network_section(data: dict, plots: Path, run_quiet: bool = True) -> tuple[list[str], list[Path]]:
    s = data["settings"]
    out = [f"{data['network']} on {data['environment']['device']}: inference forward at batch "
           f"{s['batch_inference']} × {'×'.join(map(str, s['patch_inference']))}, training step (forward, "
           f"loss, backward, clipping, AdamW) at batch {s['batch_train']} × {'×'.join(map(str, s['patch_train']))}; "
           f"{s['repeats']} interleaved repeats after {s['warmup']} warm-up.", ""]
    body = []
    for case in data["cases"]:
        stable_case = run_quiet and _speedups_stable(case)
        for b, r in case["results"].items():
            share = (r.get("profile") or {}).get("idc_share")
            body.append([case["case"], case["dtype"], b, f"{r['median_s']:.3f}", f"{r['min_s']:.3f}",
                         fmt(r.get("spread"), ".0%"), fmt(r.get("speedup_spread") if b != "reference" else None, ".0%"),
                         f"{r['speedup_vs_reference']:.2f}x{mark(stable_case)}", fmt(share, ".1%")])
    out += table(["case", "dtype", "variant", "median s", "min s", "time spread", "speedup spread",
                  "speedup (median)", "InceptionDWConv3d share (profiler)"], body)
    out += ["", "Spreads are (75th - 25th percentile) / median over the repeats; the speedup spread is that of "
            "the per-repeat ratios of the interleaved pairs, which decides whether a speedup is marked.",
            "Variants: `reference` is PyTorch's layers throughout; `B-op` the fused InceptionDWConv3d only; `B` "
            "also the fused InstanceNorm + LeakyReLU and the fused upsampling; `B-cl` as `B` in channels_last_3d."]
    shares = [[case["case"], b, "; ".join(f"{o['op']} {o['share']:.0%} ({o['calls']})" for o in top[:5])]
              for case in data["cases"] for b, r in case["results"].items()
              if (top := (r.get("profile") or {}).get("top_ops"))]
    if shares:
        out += ["", "Largest shares of self time in the profiled step (operator, share, calls):", ""]
        out += table(["case", "variant", "operators"], shares)
    return out, [plot_network(data, plots / "network.png", run_quiet)]


def _speedups_stable(case: dict) -> bool:
    return all(r.get("stable", True) for b, r in case["results"].items() if b != "reference")


def plot_network(data, path, run_quiet: bool = True):
    plt = _pyplot()
    cases = data["cases"]
    fig, axes = plt.subplots(1, len(cases), figsize=(3.2 * len(cases) + 1, 3.5), squeeze=False)
    for ax, case in zip(axes[0], cases):
        names = list(case["results"])
        med = [case["results"][b]["median_s"] for b in names]
        stable_case = run_quiet and _speedups_stable(case)
        bars = ax.bar(names, med, color=["grey"] + ["tab:blue"] * (len(names) - 1))
        for i, b in enumerate(names):
            if not stable_case:
                bars[i].set_hatch("///")
                bars[i].set_alpha(0.5)
            ax.text(i, med[i], f"{case['results'][b]['speedup_vs_reference']:.2f}x{mark(stable_case)}",
                    ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{case['case']} ({case['dtype']})", fontsize=9)
        ax.set_ylabel("median s")
    title = f"Network: reference vs fused — {data['environment']['device']}"
    if not run_quiet or not all(_speedups_stable(c) for c in cases):
        title = "UNRELIABLE (hatched) — " + title
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- complexity

def complexity_section(data: list) -> list[str]:
    body = []
    for row in data:
        fused = row.get("fused") or row.get("reference") or {}
        pub = row.get("published") or {}
        body.append([row["network"], f"{fused.get('total_params', 0):,}", f"{fused.get('total_macs', 0) / 1e9:.2f}",
                     fmt(pub.get("paper_params_m"), ".2f") + (" M" if pub.get("paper_params_m") else ""),
                     fmt(pub.get("paper_gmacs"), ".2f")])
    patch = (data[0].get("fused") or data[0].get("reference") or {}).get("patch", []) if data else []
    return [f"`fusionseg complexity --json` (FlopCounterMode on fake tensors), per "
            f"{'×'.join(map(str, patch))} patch, batch 1:", ""] + \
        table(["network", "parameters", "GMACs", "paper parameters", "paper GMACs"], body)


# ----------------------------------------------------------------------------- FLARE

def flare_section(data: dict, plots: Path, run_quiet: bool = True) -> tuple[list[str], list[Path]]:
    from fusionseg_kernels.profiling import case_table

    backends = data["backends"]
    first = next(iter(backends.values()))
    out = [f"`fusionseg profile --per-case -- fusionseg predict --backend B` on synthetic cases "
           f"(`fusionseg synth`), one process per case as FLARE runs one container per case; random-weight "
           f"released network; device `{data['device']}`. Memory: {first['summary']['device']}.", ""]
    for b, res in backends.items():
        head, rows = case_table(res)
        out += [f"**backend `{b}`**", ""] + table(head, rows) + [""]
    if "reference" in backends and len(backends) > 1:
        ref = {c["case"]: c for c in backends["reference"]["cases"]}
        body = []
        for b, res in backends.items():
            if b == "reference":
                continue
            for c in res["cases"]:
                r = ref.get(c["case"])
                if r:
                    body.append([c["case"], b, f"{r['time_s'] / c['time_s']:.2f}x{mark(run_quiet)}",
                                 fmt(None if not c["max_mem_mb"] else r["max_mem_mb"] / c["max_mem_mb"]),
                                 fmt(None if not c["auc_mb_s"] else r["auc_mb_s"] / c["auc_mb_s"])])
        out += ["Reference against fused, per case (ratios > 1: the fused backend is faster / uses less):", ""]
        out += table(["case", "backend", "running time ratio", "max memory ratio", "total memory ratio"], body)
    return out, [plot_flare(data, plots / "flare_curves.png")]


def plot_flare(data, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    styles = ["-", "--", ":", "-."]
    cases = sorted({c["case"] for res in data["backends"].values() for c in res["cases"]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    kind = "RSS"
    for i, (b, res) in enumerate(data["backends"].items()):
        kind = "GPU" if res["summary"].get("source") == "nvml" else "RSS"
        for c in res["cases"]:
            curve = c["curve"]
            ax.plot([t for t, _ in curve], [v for _, v in curve], styles[i % len(styles)],
                    color=colors[cases.index(c["case"]) % len(colors)], label=f"{c['case']} {b}", lw=1)
    ax.set_xlabel("s since the command started")
    ax.set_ylabel(f"{kind} MB")
    ax.set_title("FLARE memory-time curves per case (line style: backend)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- host path

HOST_STAGES = ("startup", "imports", "setup", "read", "preprocess", "postprocess", "write", "gap")


def host_path_section(data: dict, plots: Path, run_quiet: bool = True) -> tuple[list[str], list[Path]]:
    s = data["settings"]
    out = [f"`fusionseg predict` as FLARE runs it — one process per case — on synthetic 512×512×Z cases at "
           f"{'×'.join(f'{v:g}' for v in s['spacing_zyx'])} mm, a random-weight model folder of the released layout "
           f"with a tiny network (features {'-'.join(map(str, s['network_features']))}, patch "
           f"{'×'.join(map(str, s['patch']))}, step {s['step']}), {s['threads']} threads, {s['repeats']} interleaved "
           f"runs per mode ({s.get('anchor_repeats', 1)} of `nnUNetv2_predict_from_modelfolder`). Host = wall − the "
           f"network stage; for nnU-Net, wall − exact mode's network time (the same tiles). Stage medians in seconds; "
           f"read is what the case waited for its voxels (they are read while torch imports).", ""]
    body = []
    for case in data["cases"]:
        for side, r in case["sides"].items():
            stages = r.get("stages_median_s") or {}
            host = r.get("host") or {}
            stable = run_quiet and (side == "nnunet" or host.get("stable", False))
            speed = r.get("host_speedup_vs_nnunet")
            body.append([f"512×512×{case['slices']}", side, *[fmt(stages.get(k)) for k in HOST_STAGES],
                         fmt(stages.get("network")), f"{fmt(host.get('median_s'))}{mark(stable)}",
                         fmt(host.get("spread"), ".0%"), fmt(r["wall"]["median_s"]), f"{r['peak_rss_mb']:.0f}",
                         "-" if speed is None else f"{speed:.1f}x{mark(stable)}"])
    out += table(["case", "side", *HOST_STAGES, "network", "host s", "host spread", "wall s", "peak RSS MB",
                  "host vs nnU-Net"], body)
    return out, [plot_host_path(data, plots / "host_path.png", run_quiet)]


def plot_host_path(data, path, run_quiet: bool = True):
    """Stacked bars: each mode's stages per case (network hatched), nnU-Net's wall as one bar."""
    plt = _pyplot()
    rows = [(case, side, r) for case in data["cases"] for side, r in case["sides"].items()]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = []
    for i, (case, side, r) in enumerate(rows):
        labels.append(f"{case['slices']} slices, {side}")
        stages = r.get("stages_median_s")
        if not stages:   # the anchor: its wall time only
            ax.barh(i, r["wall"]["median_s"], color="lightgrey", edgecolor="grey")
            ax.text(r["wall"]["median_s"], i, f" {r['wall']['median_s']:.0f} s", va="center", fontsize=7)
            continue
        left = 0.0
        for k, stage in enumerate((*HOST_STAGES[:5], "network", *HOST_STAGES[5:])):
            width = max(stages.get(stage, 0.0), 0.0)
            ax.barh(i, width, left=left, color="white" if stage == "network" else colors[k % len(colors)],
                    edgecolor="grey", hatch="///" if stage == "network" else None,
                    label=stage if i == 0 else None)
            left += width
        host = r["host"]["median_s"]
        ax.text(left, i, f" host {host:.2f} s{mark(run_quiet and r['host']['stable'])}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (median); the network hatched")
    ax.legend(fontsize=6, ncol=9, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    title = "Host path of a FLARE case, one process per case"
    ax.set_title(title if run_quiet else "UNRELIABLE — " + title, fontsize=9)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- the report

def environment_lines(results: dict) -> list[str]:
    env = results["environment"]
    alloc = env.get("allocator_env") or {}
    return [
        f"- device: {env['device']}" + (f" (compute capability {env['compute_capability']})"
                                        if env.get("compute_capability") else ""),
        f"- driver: {env.get('driver') or 'none (no GPU driver)'}; CUDA (torch) {env.get('cuda')}; "
        f"torch {env['torch']}; triton {env.get('triton')}; Python {env['python']}",
        f"- CPU: {env['cpu']} ({env.get('cpu_count')} cores, {env.get('cpu_capability')}); torch threads "
        f"{env['threads']}",
        f"- commit {env['commit']}" + (" (uncommitted changes)" if env.get("dirty") else ""),
        f"- allocator settings of this process: {alloc or 'glibc default'} (the CPU timing jobs run with "
        "MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ set to keep freed memory, and with OMP_WAIT_POLICY=ACTIVE "
        "OMP_PROC_BIND=close OMP_PLACES=cores: idle OpenMP threads spin on their own core instead of sleeping, "
        "which keeps two-thread timings from waiting ~8 ms for a thread to wake (`python -m bench.thread_stability`); "
        "each job records its own)",
        f"- date (UTC): {env['date_utc']}; command: `{env['command']}`",
    ]


def machine_lines(results: dict) -> list[str]:
    """The machine's state during each timed job and the limits of a quiet run."""
    machine = results.get("machine")
    verdict = results.get("verdict")
    if not machine or not verdict:
        return ["- machine state: not recorded (a report from before the harness recorded it)"]
    limits = verdict["limits"]
    headline = limits.get("headline_spread", limits["spread"])
    out = [f"- machine state (quiet = other processes under {limits['other_cpu_cores']:.0%} of a core on average "
           f"and above {limits['other_cpu_cores_window']:.0%} in at most {limits.get('max_bursts', 0)} windows of "
           f"{limits['window_s']} s, steal under "
           f"{limits['steal_cores']:.0%}, and the headline figures steady: each network speedup's per-repeat "
           f"spread under {limits['spread']:.0%}, each geometric mean's bootstrap spread under {headline:.0%}): "
           + ("**quiet**" if verdict["quiet"] else "**not quiet**")]
    wait = machine.get("wait_for_quiet") or {}
    if wait.get("quiet") is not None:
        out.append(f"- waited {wait['waited_s']:.0f} s for a quiet machine before timing "
                   f"({'found it' if wait['quiet'] else 'gave up'})")
    body = []
    for name, rec in (machine.get("jobs") or {}).items():
        if "other_cpu_cores" in rec:
            body.append([name, f"{rec['seconds']:.0f}", f"{rec['other_cpu_cores']:.0%}",
                         f"{rec['other_cpu_cores_max_window']:.0%} ({rec.get('bursts', 0)} bursts)",
                         f"{rec['steal_cores']:.0%}",
                         f"{rec['load_average_start'][0]:.2f} → {rec['load_average_end'][0]:.2f}"])
    if body:
        out += ["", *table(["job", "seconds", "other processes (cores, mean)", "max window", "steal",
                            "load average"], body)]
    return out


def build_markdown(results: dict, out_dir: Path) -> tuple[str, list[Path]]:
    plots = out_dir / "plots"
    sec = results.get("sections", {})
    verdict = results.get("verdict") or {"quiet": True, "reasons": []}
    run_quiet = bool(verdict["quiet"])
    lines = [f"# Benchmark report — {results['environment']['device']}", ""]
    if not run_quiet:
        lines += ["**UNRELIABLE**: " + "; ".join(verdict["reasons"]) + ". Figures marked ⚠ (hatched in the "
                  "plots) are not results; rerun on a quiet machine.", ""]
    lines += environment_lines(results) + [""] + machine_lines(results) + [""]
    status = results.get("status", {})
    if status:
        body = [[n, "skipped" if s.get("ok") is None else "ok" if s["ok"] else "FAILED", f"{s.get('seconds', 0):.0f}",
                 s.get("skipped") or s.get("error") or ""] for n, s in status.items()]
        lines += table(["job", "status", "seconds", "note"], body)
        lines += ["", f"Total: {results.get('total_seconds', 0):.0f} s.", ""]
    figs: list[Path] = []

    def add(title, part):
        lines.extend([f"## {title}", ""])
        text, new = part
        lines.extend(text)
        for f in new:
            lines.extend(["", f"![{f.stem}](plots/{f.name})"])
            figs.append(f)
        lines.append("")

    op = sec.get("op")
    if op:
        add("Op benchmark: InceptionDWConv3d",
            cpu_op_section(op["data"], plots, op.get("one_thread"), run_quiet) if op["kind"] == "cpu"
            else gpu_op_section(op["data"], plots, run_quiet))
    if sec.get("gpu_static"):
        add("Static GPU report (predictions)", gpu_static_section(sec["gpu_static"], plots))
    if sec.get("network"):
        add("Network: reference vs fused", network_section(sec["network"], plots, run_quiet))
    if sec.get("complexity"):
        add("Complexity", (complexity_section(sec["complexity"]), []))
    if sec.get("flare"):
        add("FLARE efficiency profile of `fusionseg predict`", flare_section(sec["flare"], plots, run_quiet))
    if sec.get("host_path"):
        add("Host path of a FLARE case: everything but the network", host_path_section(sec["host_path"], plots,
                                                                                      run_quiet))
    missing = [n for n in ("op", "gpu_static", "network", "complexity", "flare", "host_path") if not sec.get(n)]
    if missing:
        lines += [f"Not in this report (skipped or failed, see the job table): {', '.join(missing)}.", ""]
    return "\n".join(lines), figs


def write_report(results: dict, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    md, _ = build_markdown(results, out_dir)
    path = out_dir / "report.md"
    write_atomic(path, md)
    return path


README_START, README_END = "<!-- bench-sample:start -->", "<!-- bench-sample:end -->"


def readme_sample(results: dict, source: str) -> str:
    """The README's sample of `make bench`, from a stored results.json of a quiet run: the op's
    geometric means (two threads and one) and the network's speedups, with the run's commit, date,
    command and machine state. Refuses a run that was not quiet."""
    verdict = results.get("verdict") or {}
    if not verdict.get("quiet"):
        raise ValueError(f"{source} is not from a quiet run ({'; '.join(verdict.get('reasons', ['no verdict']))}); "
                         f"the README shows only figures from quiet runs")
    env = results["environment"]
    op = results["sections"]["op"]
    jobs = results["machine"]["jobs"]
    other = max(rec["other_cpu_cores"] for name, rec in jobs.items() if "other_cpu_cores" in rec)
    lines = [f"A sample, from `{env['command']}` on {env['device']} ({env.get('cpu_count')} cores, "
             f"{env['threads']} threads) at commit {env['commit'][:7]}, {env['date_utc'][:16].replace('T', ' ')} UTC, "
             f"a quiet run (other processes used at most {other:.0%} of a core in any job; stored as "
             f"`{source}`):", ""]
    rows = [["InceptionDWConv3d, the network's 28 calls, geometric mean", "fwd", "fwd+bwd"]]
    for label, data in (("fused `cpu` vs reference, 2 threads", op["data"]),
                        ("fused `cpu` vs reference, 1 thread", op.get("one_thread"))):
        if data:
            g = data["summary"]["geomean_speedup"]["cpu"]
            rows.append([label, f"{g['fwd']:.2f}×", f"{g['fwdbwd']:.2f}×"])
    g = op["data"]["summary"]["geomean_speedup"].get("compile")
    if g:
        rows.append(["torch.compile(reference) vs reference, 2 threads", f"{g['fwd']:.2f}×", f"{g['fwdbwd']:.2f}×"])
    lines += table(rows[0], rows[1:]) + [""]
    net = results["sections"]["network"]
    body = []
    for case in net["cases"]:
        ref, fused = case["results"]["reference"], case["results"]["cpu"]
        shares = [fmt((r.get("profile") or {}).get("idc_share"), ".1%") for r in (ref, fused)]
        body.append([f"{case['case']}, {'×'.join(map(str, case['shape']))}", f"{ref['median_s']:.2f}",
                     f"{fused['median_s']:.2f}", f"{fused['speedup_vs_reference']:.2f}× "
                     f"(spread {fused['speedup_spread']:.0%})", " → ".join(shares)])
    lines += table(["released network, CPU, fp32", "reference s", "fused `cpu` s", "speedup (median of 7)",
                    "op's share of the time"], body)
    return "\n".join(lines) + "\n"


def write_readme_sample(results_file: Path, readme: Path) -> None:
    """Rewrites the README's sample (between its markers) from a stored results.json."""
    results = json.loads(Path(results_file).read_text())
    try:
        source = str(Path(results_file).resolve().relative_to(Path(readme).resolve().parent))
    except ValueError:
        source = str(results_file)
    text = Path(readme).read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    write_atomic(Path(readme), text[:start] + "\n" + readme_sample(results, source) + text[end:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("report_dir", nargs="?", type=Path, help="a folder holding results.json")
    p.add_argument("--results", type=Path, help="results.json (default REPORT_DIR/results.json)")
    p.add_argument("--out", type=Path, help="where report.md and plots/ go (default: the results' folder)")
    p.add_argument("--readme-sample", type=Path, metavar="RESULTS_JSON",
                   help="rewrite README.md's sample from this stored results.json of a quiet run, and nothing else")
    args = p.parse_args(argv)
    if args.readme_sample:
        try:
            write_readme_sample(args.readme_sample, Path(__file__).resolve().parents[1] / "README.md")
        except (OSError, ValueError) as err:
            print(f"report: {err}", file=sys.stderr)
            return 1
        return 0
    if args.results is None and args.report_dir is None:
        p.error("give REPORT_DIR or --results FILE")
    src = args.results or args.report_dir / "results.json"
    try:
        results = json.loads(src.read_text())
    except OSError as err:
        print(f"report: cannot read {src}: {err.strerror}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"report: {src} is not JSON: {err}", file=sys.stderr)
        return 1
    path = write_report(results, args.out or src.parent)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
