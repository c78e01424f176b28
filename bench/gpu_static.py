#!/usr/bin/env python3
"""Static GPU report of inception_dwconv3d's kernels, made without a GPU.

    .venv/bin/python -m bench.gpu_static                      # sm_89 + sm_90, fp32/fp16/bf16, 28 calls
    .venv/bin/python -m bench.gpu_static --arch sm_90 --dtypes bf16 --json report.json
    .venv/bin/python -m bench.gpu_static --subset             # the calls with x >= 32 MB only

Triton: every kernel is compiled by Triton's ahead-of-time compiler for each architecture and
dtype, with the specialization the launcher derives for the real call (argument divisibility by
16 / equal to 1, constexprs, options), for every config the launcher's autotuner would try on the
network's 28 calls at batch 2 (after its config pruning). The arguments come from the launcher's
own helpers (`_forward_launch_args` etc.) called on meta tensors, so they are the real ones.
CUDA: the cubins of the built library (fusionseg_kernels/_C*.so), read with cuobjdump
-res-usage and nvdisasm. Compiled Triton kernels live in Triton's cache (TRITON_CACHE_DIR, by
default ~/.triton/cache), so a rerun only disassembles.

Per kernel: registers, spill bytes (bytes stored by STL, the local-memory stores of the SASS:
spills or local arrays), stack frame, shared memory, theoretical occupancy, and global
loads/stores by access width from the SASS. Per call and backend: grid and waves, the bytes each
program reads including halos (read amplification over |x|), DRAM bytes against the roofline
(forward 2|x|, forward+backward 4.5|x|), bytes in flight per SM against Little's law, and a
predicted fraction of DRAM bandwidth. The model (MODEL below) is a prediction, not a
measurement; bench/bench_gpu_kernels.py measures on a GPU.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler, not the interpreter (read at import)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from bench.harness import ROOT, network_layer_calls  # noqa: E402
from fusionseg_kernels.testing import STRIP_KERNELS  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TRITON_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
CACHE_FILE = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache")) / "fusionseg_gpu_static.json"

# Per architecture: the limits that decide occupancy (CUDA programming guide, "compute
# capabilities" table) and the device the prediction is made for. Bandwidths are datasheet
# figures: H200 4.8 TB/s (H100 SXM 3.35 TB/s, same SM count: scale the in-flight need by
# 3.35/4.8), RTX 4090 1.01 TB/s. DRAM latency ~700 ns (loaded HBM3/GDDR6X latencies measured by
# microbenchmarks are 600-800 ns); L2 hit latency ~250 ns and L2 bandwidth ~5.5 TB/s (H100) /
# ~5 TB/s (RTX 4090) from published microbenchmarks (Chips and Cheese; Luo et al., "Benchmarking
# and dissecting the Nvidia Hopper GPU architecture", 2024).
ARCHS = {
    "sm_90": dict(cap=90, device="H200", sms=132, bw=4.8e12, l2_bw=5.5e12, clock=1.755e9,
                  max_threads=2048, max_ctas=32, regs=65536, smem_sm=228 * 1024,
                  smem_reserved=1024),
    "sm_89": dict(cap=89, device="RTX 4090", sms=128, bw=1.008e12, l2_bw=5.0e12, clock=2.52e9,
                  max_threads=1536, max_ctas=24, regs=65536, smem_sm=100 * 1024,
                  smem_reserved=1024),
}
MODEL = dict(
    dram_latency_s=700e-9,   # a load that misses L2
    l2_latency_s=250e-9,     # a load that hits L2 (the halo re-reads of neighbouring tiles)
    block_reduction_s=60e-9,  # one block-wide reduction (shuffles + shared memory + 2 barriers)
    copy_ceiling=0.92,       # the best fraction of datasheet bandwidth a device copy reaches
    launch_s=2e-6,           # a kernel launch back to back with the previous one
    sector=32,               # L2 -> L1 transfers are 32-byte sectors
)


# ------------------------------------------------------------------------------ shapes

def layer_calls(batch=2):
    """[(shape NCDHW, gc, number of calls)] of the network's 28 calls, largest first."""
    return network_layer_calls(batch=batch)


def meta_call(shape, gc, dtype):
    x = torch.empty(shape, device="meta", dtype=dtype)
    ws = [torch.empty((gc, 1, *k), device="meta", dtype=dtype) for k in STRIP_KERNELS]
    bs = [torch.empty((gc,), device="meta", dtype=dtype) for _ in STRIP_KERNELS]
    return x, ws, bs


# ------------------------------------------------------------------------------ SASS / cubin

def _run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


_WIDTH = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}


def sass_stats(sass: str):
    """Global load/store counts by width, STL bytes, shuffles and barriers of one function."""
    bits = {"16": 0, "32": 0, "64": 0, "128": 0}
    stl_bytes = ldl = stl = 0
    shfl = bar = ldgsts = 0
    for m in re.finditer(r"\b(LDG|STG|LDL|STL|SHFL|BAR|LDGSTS|LDGDEPBAR)((?:\.[A-Z0-9_]+)*)", sass):
        op, mods = m.group(1), m.group(2).split(".")[1:]
        width = 32
        for mo in mods:
            if mo in _WIDTH:
                width = _WIDTH[mo]
        if op in ("LDG", "STG"):
            bits[str(max(16, width))] = bits.get(str(max(16, width)), 0) + 1
        elif op == "STL":
            stl += 1
            stl_bytes += width // 8
        elif op == "LDL":
            ldl += 1
        elif op == "SHFL":
            shfl += 1
        elif op == "BAR" and "SYNC" in mods:
            bar += 1
        elif op == "LDGSTS":
            ldgsts += 1
            bits[str(max(16, width))] += 1
    return dict(global_access_bits=bits, spill_bytes=stl_bytes, stl=stl, ldl=ldl, shfl=shfl,
                bar_sync=bar, ldgsts=ldgsts)


def cubin_functions(cubin: Path):
    """{function: {registers, stack, shared, local}} from cuobjdump -res-usage, and SASS per function."""
    res = {}
    cur = None
    for line in _run([str(TRITON_BIN / "cuobjdump"), "-res-usage", str(cubin)]).splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            cur = m.group(1)
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and cur:
            res[cur] = dict(registers=int(m.group(1)), stack_bytes=int(m.group(2)),
                            static_shared=int(m.group(3)), local=int(m.group(4)))
            cur = None
    sass = subprocess.run([str(TRITON_BIN / "nvdisasm"), "-c", str(cubin)], check=True,
                          capture_output=True, text=True).stdout
    per_fn = {}
    cur = None
    for line in sass.splitlines():
        m = re.match(r"\s*\.text\.(\S+):", line) or re.match(r"^(\S+):\s*$", line)
        if m and m.group(1).rstrip(":") in res:
            cur = m.group(1).rstrip(":")
            per_fn[cur] = []
            continue
        if cur:
            per_fn[cur].append(line)
    return res, {k: "\n".join(v) for k, v in per_fn.items()}


def occupancy(arch, registers, warps, shared_bytes):
    """(CTAs per SM, fraction of the SM's warp slots) for a kernel's resources."""
    a = ARCHS[arch]
    regs_per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    by_regs = (a["regs"] // regs_per_warp) // warps
    by_threads = a["max_threads"] // (32 * warps)
    by_smem = a["smem_sm"] // (shared_bytes + a["smem_reserved"])
    ctas = max(0, min(by_regs, by_threads, by_smem, a["max_ctas"]))
    return ctas, ctas * warps * 32 / a["max_threads"]


# ------------------------------------------------------------------------------ Triton

def _triton_compile(fn, args, kwargs, arch, num_warps, cache):
    """Compile fn for the real arguments' specialization; returns the kernel's static figures."""
    a = ARCHS[arch]
    target = GPUTarget("cuda", a["cap"], 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    key_src = repr((fn.cache_key, arch, sorted(signature.items()), sorted(constexprs.items()),
                    sorted((k, repr(v)) for k, v in attrs.items()), num_warps, triton.__version__))
    key = hashlib.sha256(key_src.encode()).hexdigest()
    if key in cache:
        return cache[key]
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                              options=options.__dict__)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        res, sass = cubin_functions(cubin)
    name = compiled.metadata.name
    r = res[name]
    stats = sass_stats(sass.get(name, ""))
    shared = int(compiled.metadata.shared) + r["static_shared"]
    divisible = sorted(fn.arg_names[k[0]] for k, v in attrs.items() if v)
    out = dict(registers=r["registers"], stack_bytes=r["stack_bytes"], local_bytes=r["local"],
               shared_bytes=shared, num_warps=num_warps, specialized=divisible, **stats)
    cache[key] = out
    return out


def triton_kernels(arch, dtype_name, calls, cache, log, first_config_only=False):
    """Static figures of every (kernel, config) the launcher uses for the calls, per call
    (first_config_only: the first config of each call's class, what FUSIONSEG_TRITON_AUTOTUNE=0
    launches)."""
    from fusionseg_kernels.ops.inception_dwconv3d import triton_impl as ti

    dtype = DTYPES[dtype_name]
    per_call = []
    for shape, gc, ncalls in calls:
        x, ws, bs = meta_call(shape, gc, dtype)
        y = torch.empty_like(x)
        fwd = ti.forward_launch(x, y, ws, bs)
        fwd_configs = _launcher_configs(fwd)
        if first_config_only:
            fwd_configs = fwd_configs[:1]
        gy = torch.empty_like(x)
        gx = torch.empty_like(x)
        entry = dict(shape=shape, gc=gc, calls=ncalls, forward=[], backward=[])
        for cfg in fwd_configs:
            kw = dict(fwd.kwargs, **cfg.all_kwargs())
            k = _triton_compile(fwd.jit_function, fwd.args, kw, arch, cfg.num_warps, cache)
            entry["forward"].append(dict(config=cfg.kwargs, grid=fwd.grid(kw)[0], **k))
            log(f"triton {arch} {dtype_name} {shape} forward {cfg.kwargs}: {k['registers']} regs")
        bwd_configs = _launcher_configs(ti.backward_launch(gy, x, gx, ws)[0])
        if first_config_only:
            bwd_configs = bwd_configs[:1]
        for cfg in bwd_configs:
            bwd, partials = ti.backward_launch(gy, x, gx, ws, bwd_configs)
            kw = dict(bwd.kwargs, **cfg.all_kwargs())
            k = _triton_compile(bwd.jit_function, bwd.args, kw, arch, cfg.num_warps, cache)
            wgrad, _, _ = ti.weight_grad_launch(partials, ws)
            wkw = dict(wgrad.kwargs)
            wwarps = wkw.pop("num_warps", 4)
            kwg = _triton_compile(wgrad.jit_function, wgrad.args, wkw, arch, wwarps, cache)
            entry["backward"].append(dict(config=cfg.kwargs, grid=bwd.grid(kw)[0], kernel=k,
                                          weight_grad=dict(grid=wgrad.grid[0], kwargs=wkw, **kwg),
                                          partial_bytes=partials.numel() * partials.element_size()))
            log(f"triton {arch} {dtype_name} {shape} backward {cfg.kwargs}: {k['registers']} regs, "
                f"{k['spill_bytes']} B spilled; weight grad grid {wgrad.grid[0]}")
        per_call.append(entry)
    return per_call


def _launcher_configs(launch):
    """The configs the autotuner would time for this launch (after its own pruning)."""
    autotuner = launch.kernel
    autotuner.nargs = dict(zip(autotuner.arg_names, launch.args))
    try:
        return autotuner.prune_configs(dict(launch.kwargs))
    finally:
        autotuner.nargs = None


# ------------------------------------------------------------------------------ CUDA

CUDA_SPECS = {  # group -> (blocking axis, R) of the CUDA kernels (inception_dwconv3d_kernel.cu)
    0: ("d", 8), 1: ("w", 4), 2: ("h", 4), 3: ("d", 8)}
CUDA_THREADS = 256
TARGET_MIN_X_BYTES = 32e6      # the targets hold for calls whose input is at least 32 MB in bf16
CUDA_ROWS_IN_FLIGHT = 4        # kRowsInFlight: element-wise staging, rows per warp at once
CUDA_VECTORS_IN_FLIGHT = 4     # kVectorsInFlight: 16-byte staging, vectors per thread at once
CUDA_IDENTITY_128BIT_ACCESSES = 8  # identity_copy: 4 unrolled 16-byte loads and 4 stores


#: the CUDA kernels of the fused InstanceNorm + LeakyReLU (csrc/ops/cuda/instance_norm_act_kernel.cu),
#: the grad_ names first (each contains its forward counterpart's name)
CUDA_NORM_KERNELS = ("grad_moments_kernel", "grad_statistics_kernel", "grad_apply_kernel", "moments_kernel",
                     "statistics_kernel", "apply_kernel")


def cuda_library():
    libs = sorted((ROOT / "fusionseg_kernels").glob("_C*.so"))
    return libs[0] if libs else None


def cuda_kernels(arch, lib, log):
    """[{kernel, dtype, ...}] of the library's cubin for arch (None without CUDA kernels)."""
    lib = Path(lib).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            listing = _run([str(TRITON_BIN / "cuobjdump"), "-lelf", str(lib)])
        except subprocess.CalledProcessError:
            return None
        names = [n for n in re.findall(r"ELF file\s+\d+: (\S+)", listing) if n.endswith(f".{arch}.cubin")]
        if not names:
            return None
        out = []
        for n in names:
            subprocess.run([str(TRITON_BIN / "cuobjdump"), "-xelf", n, str(lib)], cwd=tmp,
                           check=True, capture_output=True)
            res, sass = cubin_functions(Path(tmp) / n)
            for fn, r in res.items():
                demangled = _demangle(fn)
                kind = next((k for k in ("idc_conv_kernel", "idc_backward_kernel",
                                         "idc_weight_grad_reduce_kernel", "idc_weight_grad_generic_kernel",
                                         "idc_dx_kernel") + CUDA_NORM_KERNELS if k in fn), None)
                if kind is None:
                    kind = (re.sub(r"^.*?(idc_\w+?kernel).*$", r"\1", demangled) if "idc_" in demangled
                            else demangled[:60])
                rest = fn[fn.index(kind) + len(kind):] if kind in fn else ""
                dtype = ("fp16" if rest.startswith("IN3c104Half") else
                         "bf16" if rest.startswith("IN3c108BFloat16") else
                         "fp64" if rest.startswith("Id") else "fp32")
                spec = ("strips" if "ConvSpecILi3ELi3ELi3E" in fn else
                        "generic" if "ConvSpec" in fn else "-")
                if kind in CUDA_NORM_KERNELS:
                    # the streaming kernels come as a 16-byte-vector and a scalar instance (template V)
                    vector_size = re.search(r"Li(\d+)EE", rest[:40])
                    spec = "-" if vector_size is None else "scalar" if vector_size.group(1) == "1" else "vector"
                    kind = f"norm_{kind}"
                stats = sass_stats(sass.get(fn, ""))
                out.append(dict(kernel=kind, symbol=fn, dtype=dtype, spec=spec, **r, **stats))
        log(f"cuda {arch}: {len(out)} kernels in {lib.name}")
        return out


def _demangle(sym):
    try:
        return _run(["c++filt", sym]).strip()
    except (OSError, subprocess.CalledProcessError):
        return sym


def _pow2_at_least(v):
    p = 1
    while p < v and p < (1 << 20):
        p <<= 1
    return p


def cuda_group_tile(k, axis, r, D, H, W, budget=CUDA_THREADS):
    kd, kh, kw = k
    ext = {"d": D, "h": H, "w": W}
    ext[axis] = -(-ext[axis] // r)
    bw = max(1, min(32, budget, _pow2_at_least(ext["w"])))
    bh = max(1, min(budget // bw, _pow2_at_least(ext["h"])))
    bd = max(1, min(budget // (bw * bh), _pow2_at_least(ext["d"])))
    td, th, tw = bd * (r if axis == "d" else 1), bh * (r if axis == "h" else 1), bw * (r if axis == "w" else 1)
    tiles = -(-D // td) * -(-H // th) * -(-W // tw)
    return dict(td=td, th=th, tw=tw, hd=td + kd - 1, hh=th + kh - 1, hw=tw + kw - 1, tiles=tiles,
                active=bw * bh * bd)


# ------------------------------------------------------------------------------ model

def _sector_bytes(extent_w, halo_w, elt):
    """Bytes of 32-byte sectors a row of extent_w elements plus halo_w each side touches
    (row start aligned to a sector)."""
    s = MODEL["sector"]
    lo = -halo_w * elt
    hi = (extent_w + halo_w) * elt
    return (math.ceil(hi / s) - math.floor(lo / s)) * s


def _finish(pred, arch, roofline, dram, l2_bytes, programs, ctas, inflight_sm, t_prog_mix,
            bytes_per_prog_mix, issue_s, read_share):
    """Fill the model's terms: Little's law, L2, waves, issue; predicted fraction.

    Time of a pass = the largest of: DRAM bytes over the rate the resident programs sustain
    (each of the SM's CTA slots moves a program's bytes per program latency, Little's law),
    capped by the copy ceiling; L2->SM bytes over L2 bandwidth; issue time; then divided by
    the last wave's efficiency."""
    a = ARCHS[arch]
    need = read_share * a["bw"] * MODEL["dram_latency_s"] / a["sms"]
    waves = programs / max(1, a["sms"] * ctas)
    wave_eff = waves / math.ceil(waves) if waves > 0 else 0.0
    latency_rate = a["sms"] * ctas * bytes_per_prog_mix / t_prog_mix if t_prog_mix > 0 else 0.0
    t_dram = dram / max(1.0, min(a["bw"] * MODEL["copy_ceiling"], latency_rate))
    t_l2 = l2_bytes / a["l2_bw"]
    t = max(t_dram, t_l2, issue_s) / max(wave_eff, 1e-9)
    pred.update(
        roofline_bytes=roofline, dram_bytes=dram, dram_over_roofline=dram / roofline,
        l2_to_sm_bytes=l2_bytes, programs=programs, ctas_per_sm=ctas, waves=waves,
        wave_efficiency=wave_eff, inflight_read_bytes_per_sm=inflight_sm,
        littles_law_read_bytes_per_sm=need, program_latency_s=t_prog_mix,
        sustained_bytes_per_s=min(a["bw"] * MODEL["copy_ceiling"], latency_rate),
        time_dram_s=t_dram, time_l2_s=t_l2, time_issue_s=issue_s, predicted_time_s=t,
        predicted_fraction=min(MODEL["copy_ceiling"], roofline / a["bw"] / t),
        bound=max((("dram-latency" if latency_rate < a["bw"] * MODEL["copy_ceiling"] else "dram", t_dram),
                   ("l2", t_l2), ("issue", issue_s)), key=lambda p: p[1])[0])
    return pred


def _triton_code_shape(ti):
    """What the model needs to know of the Triton kernels' structure, read from the module:
    taps unrolled per loop iteration (older code: only kw), channel blocks per identity
    program, and whether the backward reduces every tap over the block."""
    return dict(max_unrolled=ti.MAX_UNROLLED_TAPS, id_blocks=ti.IDENTITY_CHANNEL_BLOCKS,
                per_tap_block_reduction=False)


def _tap_batches(k, max_unrolled):
    """Dependent rounds of loads of one program of kernel k: the (kd, kh) loop iterations."""
    kd, kh, kw = k
    if max_unrolled is None:
        return kd * kh
    if kd * kh * kw <= max_unrolled:
        return 1
    if kh * kw <= max_unrolled:
        return kd
    return kd * kh


def triton_prediction(arch, dtype_name, call, direction):
    """Model of the Triton kernels for one call; of the launcher's configs, the one the model
    ranks best (on a GPU the autotuner times them)."""
    from fusionseg_kernels.ops.inception_dwconv3d import triton_impl as ti

    a = ARCHS[arch]
    code = _triton_code_shape(ti)
    shape, gc = call["shape"], call["gc"]
    N, C, D, H, W = shape
    elt = torch.empty((), dtype=DTYPES[dtype_name]).element_size()
    x_bytes = math.prod(shape) * elt
    ident = C - 4 * gc
    bwd_by_cfg = {json.dumps(b["config"], sort_keys=True): b for b in call["backward"]}
    best = None
    for f in call["forward"]:
        cfg = f["config"]
        bc, bd, bh, bw = cfg["BLOCK_C"], cfg["BLOCK_D"], cfg["BLOCK_H"], cfg["BLOCK_W"]
        nt = -(-D // bd) * -(-H // bh) * -(-W // bw)
        elems = bc * min(bd, D) * min(bh, H) * min(bw, W)  # useful elements of a full tile
        id_c = code["id_blocks"] * bc
        id_progs = N * -(-ident // id_c) * nt if ident else 0
        cv_progs = N * -(-gc // bc) * nt  # per group
        b = bwd_by_cfg.get(json.dumps(cfg, sort_keys=True))
        passes = [("forward", f)] + ([("backward", b)] if direction != "forward" else [])
        if any(k is None for _, k in passes):
            continue
        preds = {}
        for which, info in passes:
            kern = info if which == "forward" else info["kernel"]
            ctas, _ = occupancy(arch, kern["registers"], kern["num_warps"], kern["shared_bytes"])
            srcs = 1 if which == "forward" else 2  # backward: dy and x, both with halos
            # L2 -> SM bytes: sector-rounded tile + halo of every program
            l2 = id_progs * id_c * min(bd, D) * min(bh, H) * _sector_bytes(min(bw, W), 0, elt)
            for k in STRIP_KERNELS:
                rows = bc * min(bd + k[0] - 1, D + k[0] - 1) * min(bh + k[1] - 1, H + k[1] - 1)
                l2 += cv_progs * srcs * rows * _sector_bytes(min(bw, W), k[2] // 2, elt)
            if which == "forward":
                roof, read_share = 2 * x_bytes, 0.5
                dram = roof + 0.0
            else:
                roof, read_share = 2.5 * x_bytes, 0.6
                dram = roof + 2 * info["partial_bytes"]  # written, then read by the second stage
            # latency of one program: its dependent load rounds (the first from DRAM, the rest
            # L2 hits of the overlapping shifted tiles), plus block reductions
            t_id = MODEL["dram_latency_s"]
            t_cv = []
            for k in STRIP_KERNELS:
                t = MODEL["dram_latency_s"] + (_tap_batches(k, code["max_unrolled"]) - 1) * MODEL["l2_latency_s"]
                if which == "backward":
                    reductions = math.prod(k) + 1 if code["per_tap_block_reduction"] else 2
                    t += reductions * MODEL["block_reduction_s"]
                t_cv.append(t)
            n_prog = id_progs + 4 * cv_progs
            t_mix = (id_progs * t_id + cv_progs * sum(t_cv)) / max(1, n_prog)
            bytes_prog = dram / max(1, n_prog)
            inflight = ctas * (id_progs * id_c * elems / bc * elt + 4 * cv_progs * elems * elt * srcs) / max(1, n_prog)
            # issue: per tap and element one FMA and one convert, plus a load per vector
            vec = max(1, 16 // elt) if kern["global_access_bits"]["128"] else 1
            taps = sum(math.prod(k) for k in STRIP_KERNELS) / 4
            per_elem = taps * (2 + 1 / vec) * (1 if which == "forward" else 2.5)
            issue = 4 * gc * N * D * H * W * per_elem / 32 / (a["sms"] * 4 * a["clock"])
            p = _finish(dict(config=cfg), arch, roof, dram, l2, n_prog, ctas, inflight, t_mix,
                        bytes_prog, issue, read_share)
            p["read_amplification"] = l2 / x_bytes
            preds[which] = p
        total_t = sum(p["predicted_time_s"] for p in preds.values())
        cand = dict(passes=preds, config=cfg)
        if direction != "forward":
            wg = b["weight_grad"]
            wctas, _ = occupancy(arch, wg["registers"], wg["num_warps"], wg["shared_bytes"])
            values = b["partial_bytes"] / 4
            per_iter = wg["kwargs"].get("ROWS_BLOCK", 32) * wg["kwargs"].get("TAPS_P", 1)
            iters = math.ceil(values / max(1, wg["grid"]) / per_iter)
            wt = (MODEL["launch_s"] + iters * MODEL["l2_latency_s"]
                  * math.ceil(wg["grid"] / max(1, a["sms"] * wctas)))
            cand["weight_grad"] = dict(grid=wg["grid"], programs_per_sm=wg["grid"] / a["sms"],
                                       iterations_per_program=iters, time_s=wt,
                                       share_of_backward=wt / (preds["backward"]["predicted_time_s"] + wt))
            total_t += wt
        roof_total = (2 if direction == "forward" else 4.5) * x_bytes
        cand["predicted_fraction"] = min(MODEL["copy_ceiling"], roof_total / a["bw"] / total_t)
        if best is None or cand["predicted_fraction"] > best["predicted_fraction"]:
            best = cand
    return best


def cuda_prediction(arch, dtype_name, shape, gc, direction, kernels):
    a = ARCHS[arch]
    N, C, D, H, W = shape
    elt = torch.empty((), dtype=DTYPES[dtype_name]).element_size()
    x_bytes = math.prod(shape) * elt
    ident = C - 4 * gc
    tiles = [cuda_group_tile(k, *CUDA_SPECS[g], D, H, W) for g, k in enumerate(STRIP_KERNELS)]
    id_chunk = 4 * CUDA_THREADS * (16 // elt)
    id_blocks = N * -(-(ident * D * H * W) // id_chunk)
    cv_blocks = [N * gc * t["tiles"] for t in tiles]

    def kern(kind):
        ks = [k for k in kernels if k["kernel"] == kind and k["dtype"] == dtype_name
              and k["spec"] in ("strips", "-")]
        return max(ks, key=lambda k: k["registers"]) if ks else None

    passes = [("forward", kern("idc_conv_kernel"))]
    if direction != "forward":
        passes.append(("backward", kern("idc_backward_kernel")))
    total_t = 0.0
    out = {}
    for which, k in passes:
        if k is None:
            return None
        acc = 8 if dtype_name == "fp64" else 4
        srcs = 1 if which == "forward" else 2
        l2 = id_blocks * id_chunk * elt + sum(
            b * t["hd"] * t["hh"] * _sector_bytes(t["tw"], (t["hw"] - t["tw"]) // 2, elt) * srcs
            for b, t in zip(cv_blocks, tiles))
        if which == "forward":
            dram = roof = 2 * x_bytes
        else:
            part = sum(gc * N * t["tiles"] * 4 * 12 for t in tiles)
            dram, roof = 2.5 * x_bytes + part, 2.5 * x_bytes
        # Halo staging. 16-byte staging shows in the SASS as 128-bit loads beyond the identity
        # copy's (4 per kernel; or cp.async, LDGSTS): the block's threads take the tile's
        # (row, 16-byte vector) pairs CUDA_VECTORS_IN_FLIGHT at a time, all loads before the
        # stores. Element-wise staging: warps take rows, CUDA_ROWS_IN_FLIGHT at a time, lanes
        # along W. The backward stages two tiles (dy, x): together when wide (load_two_tiles),
        # one after the other otherwise.
        # (taken when W is a whole number of vectors; tensors from the allocator are aligned)
        vec = 16 // elt
        wide = (k.get("ldgsts", 0) > 0 or k["global_access_bits"]["128"] > CUDA_IDENTITY_128BIT_ACCESSES) \
            and W % vec == 0
        # shared-memory rows: whole 16-byte vectors when staged wide (vector_pitch in the tiling header)
        leads = [(-(ks[2] // 2)) % vec if wide else 0 for ks in STRIP_KERNELS]
        pitch = [-(-(lead + t["hw"]) // vec) * vec if wide else t["hw"] for t, lead in zip(tiles, leads)]
        smem = max(t["hd"] * t["hh"] * p for t, p in zip(tiles, pitch)) * acc * srcs + k["static_shared"]
        ctas, _ = occupancy(arch, k["registers"], CUDA_THREADS // 32, smem)
        t_cv, inflight_cv = [], []
        for g, t in enumerate(tiles):
            if wide:
                items = t["hd"] * t["hh"] * pitch[g] // vec
                per_round = CUDA_THREADS * CUDA_VECTORS_IN_FLIGHT
                rounds = math.ceil(items / per_round)
                inflight_cv.append(srcs * min(items, per_round) * 16)
            else:
                warp_rows = t["hd"] * t["hh"] * math.ceil(t["hw"] / 32)
                rounds = srcs * math.ceil(warp_rows / (CUDA_THREADS // 32 * CUDA_ROWS_IN_FLIGHT))
                inflight_cv.append(CUDA_THREADS * CUDA_ROWS_IN_FLIGHT * elt)
            stage = rounds * (MODEL["l2_latency_s"] + (MODEL["dram_latency_s"] - MODEL["l2_latency_s"])
                              * (t["td"] * t["th"] * t["tw"]) / (t["hd"] * t["hh"] * t["hw"]))
            # then the block computes (no overlap with its own staging): ~2 instructions per
            # tap and output (FMA + shared load), 4 warp instructions per clock per SM
            kvol = math.prod(STRIP_KERNELS[g])
            compute = t["td"] * t["th"] * t["tw"] * kvol * 2 * (2 if which == "backward" else 1) / 32 / 4 / a["clock"]
            t_cv.append(stage + compute)
        n_t = id_blocks + sum(cv_blocks)
        t_mix = (id_blocks * MODEL["dram_latency_s"] + sum(b * t for b, t in zip(cv_blocks, t_cv))) / max(1, n_t)
        inflight = ctas * (CUDA_THREADS * 4 * 16 * id_blocks + sum(b * f for b, f in zip(cv_blocks, inflight_cv))
                           ) / max(1, n_t)
        conv_elems = 4 * gc * N * D * H * W
        taps = sum(math.prod(q) for q in STRIP_KERNELS) / 4
        issue = conv_elems * taps * 1.5 * (1 if which == "forward" else 2.2) / 32 / (a["sms"] * 4 * a["clock"])
        p = _finish(dict(), arch, roof, dram, l2, n_t, ctas, inflight, t_mix, dram / max(1, n_t), issue,
                    0.5 if which == "forward" else 0.6)
        p["read_amplification"] = l2 / x_bytes
        out[which] = p
        total_t += p["predicted_time_s"]
    roof_total = (2 if direction == "forward" else 4.5) * x_bytes
    res = dict(passes=out)
    if direction != "forward":
        # idc_weight_grad_reduce_kernel. One block per (conv channel, tap) (its block-wide
        # sum shows as a BAR.SYNC): each of 256 threads sums N * tiles / 256 partials. Else
        # (no barrier: the older form) one block per conv channel, one warp per tap, each warp
        # summing a tap's partials 32 at a time. Dependent L2 round trips either way.
        red = [k for k in kernels if k["kernel"] == "idc_weight_grad_reduce_kernel"]
        per_tap_blocks = bool(red) and red[0]["bar_sync"] > 0
        if per_tap_blocks:
            grid = 4 * gc * max(math.prod(k) + 1 for k in STRIP_KERNELS)
            iters = max(math.ceil(N * t["tiles"] / CUDA_THREADS) for t in tiles)
        else:
            grid = 4 * gc
            iters = max(math.ceil(N * t["tiles"] / 32) * math.ceil((math.prod(k) + 1) / 8)
                        for t, k in zip(tiles, STRIP_KERNELS))
        wt = MODEL["launch_s"] + iters * MODEL["l2_latency_s"] * math.ceil(grid / (a["sms"] * 8))
        res["weight_grad"] = dict(grid=grid, programs_per_sm=grid / a["sms"],
                                  iterations_per_program=iters, time_s=wt,
                                  share_of_backward=wt / (out["backward"]["predicted_time_s"] + wt))
        total_t += wt
    res["predicted_fraction"] = min(MODEL["copy_ceiling"], roof_total / a["bw"] / total_t)
    return res


# ------------------------------------------------------------------------------ report

# ------------------------------------------------------------------------------ the fused norm

#: the fused InstanceNorm + LeakyReLU's passes: (kernel, tensors it reads, tensors it writes), each
#: of |x| bytes; forward = moments + apply, backward = grad moments + grad apply
NORM_PASSES = {"forward": (("_moments_kernel", 1, 0), ("_apply_kernel", 1, 1)),
               "backward": (("_grad_moments_kernel", 2, 0), ("_grad_apply_kernel", 2, 1))}


def norm_calls(batch=2):
    """The released network's distinct InstanceNorm3d input shapes at batch `batch`, largest first."""
    from bench.bench_norm import network_norm_calls

    shapes = {(batch,) + tuple(shape[1:]) for shape, _slope, _n in network_norm_calls()}
    return sorted(shapes, key=lambda s: -math.prod(s))


def norm_kernels(arch, dtype_name, cache, log):
    """The four Triton kernels of the fused norm compiled for the largest call's specialization
    (every call has the same: S, the pointers and the chunk counts divisible by 16)."""
    from fusionseg_kernels.ops.instance_norm_act import triton_impl as ni

    x = torch.empty(norm_calls()[0], dtype=DTYPES[dtype_name], device="meta")
    N, C, S, n_chunks, wide = ni._geometry(x)
    acc = ni._acc_dtype(x)
    part = torch.empty((N * C, n_chunks, 2), dtype=acc, device="meta")
    v = torch.empty(N * C, dtype=acc, device="meta")
    args = {"_moments_kernel": (x, part, S, n_chunks), "_apply_kernel": (x, x, v, v, S, 0.01),
            "_grad_moments_kernel": (x, x, v, v, v, v, part, S, C, n_chunks, 0.01),
            "_grad_apply_kernel": (x, x, x, v, v, v, v, v, v, S, C, 0.01)}
    kwargs = dict(CHUNK=ni.CHUNK, BLOCK=ni.BLOCK, IS_F64=False, WIDE=wide, num_warps=ni.NUM_WARPS)
    out = {}
    for name, a in args.items():
        out[name] = _triton_compile(getattr(ni, name), a, kwargs, arch, ni.NUM_WARPS, cache)
        log(f"triton norm {arch} {dtype_name} {name}: {out[name]['registers']} regs, "
            f"{out[name]['spill_bytes']} B spilled")
    return out


def norm_prediction(arch, dtype_name, shape, kernels, direction, launch=None):
    """Predicted fraction of DRAM bandwidth of the norm's passes on one call: each pass streams
    its |x|-sized tensors once; a program keeps one step (`step` elements of each tensor it reads)
    in flight, so the resident programs sustain (CTA slots x bytes per step) / DRAM latency
    (Little's law), capped by the copy ceiling. `launch`: (warps, step, chunk) of the kernels,
    by default the Triton kernels' (4 warps, BLOCK, CHUNK); `kernels` maps NORM_PASSES' names to
    their compiled resources."""
    from fusionseg_kernels.ops.instance_norm_act import triton_impl as ni

    warps, step, chunk = launch or (ni.NUM_WARPS, ni.BLOCK, ni.CHUNK)
    a = ARCHS[arch]
    elt = torch.empty((), dtype=DTYPES[dtype_name]).element_size()
    x_bytes = math.prod(shape) * elt
    planes, per_plane = shape[0] * shape[1], math.prod(shape[2:])
    programs = planes * math.ceil(per_plane / chunk)
    passes = NORM_PASSES["forward"] + (NORM_PASSES["backward"] if direction == "forward+backward" else ())
    out, total_t, total_bytes = {"passes": {}, "config": {}}, 0.0, 0.0
    for name, reads, writes in passes:
        k = kernels[name]
        ctas, _ = occupancy(arch, k["registers"], warps, k["shared_bytes"])
        step_bytes = reads * step * elt
        dram = (reads + writes) * x_bytes
        pred = _finish({"read_amplification": 1.0}, arch, dram, dram, dram, programs, ctas, ctas * step_bytes,
                       MODEL["dram_latency_s"], step_bytes, 0.0, reads / (reads + writes))
        pred["time_s"] = pred["predicted_time_s"] + MODEL["launch_s"]
        out["passes"][name] = pred
        total_t += pred["time_s"]
        total_bytes += dram
    out["predicted_fraction"] = min(MODEL["copy_ceiling"], total_bytes / a["bw"] / total_t)
    out["dram_bytes"] = total_bytes
    return out


#: the CUDA norm kernels' launch (csrc/ops/cuda/instance_norm_act_kernel.cu: kThreads = 256, one
#: 16-byte vector per thread and tensor in flight, kChunk = 4096): (warps, step elements, chunk)
CUDA_NORM_THREADS, CUDA_NORM_CHUNK = 256, 4096


def cuda_norm_kernels(cuda, dtype_name):
    """NORM_PASSES' names -> the vector instances of the CUDA norm kernels in `dtype_name` (with
    their shared memory under the key the model reads), from cuda_kernels()."""
    found = {k["kernel"]: k for k in cuda if k["dtype"] == dtype_name and k["spec"] == "vector"}
    return {name: dict(found[f"norm{name}"], shared_bytes=found[f"norm{name}"]["static_shared"])
            for name, _, _ in NORM_PASSES["forward"] + NORM_PASSES["backward"] if f"norm{name}" in found}


def cuda_norm_launch(dtype_name):
    elt = torch.empty((), dtype=DTYPES[dtype_name]).element_size()
    return CUDA_NORM_THREADS // 32, CUDA_NORM_THREADS * (16 // elt), CUDA_NORM_CHUNK


def add_norm_report(report, seen, arch, dtypes, subset, cache, log, cuda=None):
    calls = norm_calls()
    if subset:
        calls = [c for c in calls if math.prod(c) * 2 >= TARGET_MIN_X_BYTES]
    from fusionseg_kernels.ops.instance_norm_act import triton_impl as ni

    for dt in dtypes:
        cuda_norm = cuda_norm_kernels(cuda, dt) if cuda else {}
        if len(cuda_norm) == len(NORM_PASSES["forward"] + NORM_PASSES["backward"]):
            elt = torch.empty((), dtype=DTYPES[dt]).element_size()
            for shape in calls:
                for direction in ("forward", "forward+backward"):
                    _add_pred(report, "cuda-norm", arch, dt, shape, math.prod(shape) * elt, direction,
                              norm_prediction(arch, dt, shape, cuda_norm, direction, cuda_norm_launch(dt)))
        kernels = norm_kernels(arch, dt, cache, log)
        for name, k in kernels.items():
            _add_kernel(report, seen, "triton", f"norm{name}", arch, dt, {"BLOCK": ni.BLOCK, "CHUNK": ni.CHUNK},
                        dict(k, num_warps=4))
        elt = torch.empty((), dtype=DTYPES[dt]).element_size()
        for shape in calls:
            for direction in ("forward", "forward+backward"):
                _add_pred(report, "triton-norm", arch, dt, shape, math.prod(shape) * elt, direction,
                          norm_prediction(arch, dt, shape, kernels, direction))


def build_report(archs, dtypes, subset, log=print, cuda_lib=None):
    cache = json.loads(CACHE_FILE.read_text()) if CACHE_FILE.exists() else {}
    calls = layer_calls()
    if subset:  # the calls the targets name: x of at least 32 MB in bf16
        calls = [c for c in calls if math.prod(c[0]) * 2 >= TARGET_MIN_X_BYTES]
    report = {"kernels": [], "predictions": [], "details": {"model": MODEL, "archs": ARCHS, "calls": []}}
    lib = Path(cuda_lib) if cuda_lib else cuda_library()
    seen = set()
    try:
        for arch in archs:
            cuda = cuda_kernels(arch, lib, log) if lib else None
            for dt in dtypes:
                per_call = triton_kernels(arch, dt, calls, cache, log)
                CACHE_FILE.parent.mkdir(parents=True, exist_ok=True)
                CACHE_FILE.write_text(json.dumps(cache))
                for c in per_call:
                    for f in c["forward"]:
                        _add_kernel(report, seen, "triton", "_idc_forward_kernel", arch, dt, f["config"], f)
                    for b in c["backward"]:
                        _add_kernel(report, seen, "triton", "_idc_backward_kernel", arch, dt, b["config"], b["kernel"])
                        wg = b["weight_grad"]
                        _add_kernel(report, seen, "triton", "_idc_weight_grad_kernel", arch, dt, wg["kwargs"], wg)
                    x_bytes = math.prod(c["shape"]) * torch.empty((), dtype=DTYPES[dt]).element_size()
                    for direction in ("forward", "forward+backward"):
                        tp = triton_prediction(arch, dt, c, direction)
                        _add_pred(report, "triton", arch, dt, c["shape"], x_bytes, direction, tp)
                        if cuda:
                            cp = cuda_prediction(arch, dt, c["shape"], c["gc"], direction, cuda)
                            _add_pred(report, "cuda", arch, dt, c["shape"], x_bytes, direction, cp)
                    report["details"]["calls"].append(dict(arch=arch, dtype=dt, **{k: v for k, v in c.items()}))
                if cuda:
                    for k in cuda:
                        if k["dtype"] == dt:
                            w = 8
                            _add_kernel(report, seen, "cuda", k["kernel"], arch, dt, {"spec": k["spec"]},
                                        dict(k, num_warps=w, shared_bytes=k["static_shared"]))
            add_norm_report(report, seen, arch, dtypes, subset, cache, log, cuda)
    finally:
        CACHE_FILE.parent.mkdir(parents=True, exist_ok=True)
        CACHE_FILE.write_text(json.dumps(cache))
    return report


KERNEL_KEYS = ("backend", "kernel", "arch", "dtype", "config", "registers", "spill_bytes",
               "stack_bytes", "shared_bytes", "occupancy", "global_access_bits")
PREDICTION_KEYS = ("backend", "arch", "dtype", "shape", "x_bytes", "direction", "predicted_fraction")


def public_report(report):
    """The report with exactly the documented keys (--json)."""
    return {"kernels": [{k: e[k] for k in KERNEL_KEYS} for e in report["kernels"]],
            "predictions": [{k: e[k] for k in PREDICTION_KEYS} for e in report["predictions"]]}


def _add_kernel(report, seen, backend, kernel, arch, dtype, config, k):
    key = (backend, kernel, arch, dtype, json.dumps(config, sort_keys=True))
    if key in seen:
        return
    seen.add(key)
    ctas, occ = occupancy(arch, k["registers"], k["num_warps"], k["shared_bytes"])
    report["kernels"].append(dict(
        backend=backend, kernel=kernel, arch=arch, dtype=dtype, config=config,
        registers=k["registers"], spill_bytes=k["spill_bytes"], stack_bytes=k["stack_bytes"],
        shared_bytes=k["shared_bytes"], occupancy=round(occ, 4),
        global_access_bits=dict(k["global_access_bits"]),
        ctas_per_sm=ctas, num_warps=k["num_warps"], local_bytes=k.get("local_bytes", k.get("local", 0)),
        shfl=k["shfl"], bar_sync=k["bar_sync"], specialized=k.get("specialized")))


def _add_pred(report, backend, arch, dtype, shape, x_bytes, direction, p):
    if p is None:
        return
    report["predictions"].append(dict(backend=backend, arch=arch, dtype=dtype, shape=list(shape),
                                      x_bytes=x_bytes, direction=direction,
                                      predicted_fraction=round(p["predicted_fraction"], 4),
                                      model=p))


def print_summary(report):
    print(f"\n{'backend':7} {'kernel':32} {'arch':5} {'dtype':5} {'regs':>4} {'spill':>5} {'stack':>5} "
          f"{'smem':>6} {'occ':>5} {'ld/st 16/32/64/128':>22} {'shfl':>4} {'bar':>4} config")
    for k in report["kernels"]:
        b = k["global_access_bits"]
        cfg = k["config"]
        cfg_s = ("x".join(str(cfg[n]) for n in ("BLOCK_C", "BLOCK_D", "BLOCK_H", "BLOCK_W")) if "BLOCK_W" in cfg
                 else cfg.get("spec", ""))
        print(f"{k['backend']:7} {k['kernel'][:32]:32} {k['arch']:5} {k['dtype']:5} {k['registers']:>4} "
              f"{k['spill_bytes']:>5} {k['stack_bytes']:>5} {k['shared_bytes']:>6} {k['occupancy']:>5.2f} "
              f"{b['16']:>5}/{b['32']:>4}/{b['64']:>4}/{b['128']:>4}   {k['shfl']:>4} {k['bar_sync']:>4} {cfg_s}")
    print(f"\n{'backend':7} {'arch':5} {'dtype':5} {'shape':24} {'|x| MB':>7} {'direction':16} "
          f"{'pred':>5} {'waves':>6} {'inflight/need KB':>16} {'rd amp':>6} bound  config")
    for p in report["predictions"]:
        m = p["model"]
        first = next(iter(m["passes"].values()))
        cfg = m.get("config") or {}
        cfg_s = "x".join(str(cfg[n]) for n in ("BLOCK_C", "BLOCK_D", "BLOCK_H", "BLOCK_W")) if cfg else ""
        print(f"{p['backend']:7} {p['arch']:5} {p['dtype']:5} {str(tuple(p['shape'])):24} "
              f"{p['x_bytes'] / 1e6:>7.1f} {p['direction']:16} {100 * p['predicted_fraction']:>4.0f}% "
              f"{first['waves']:>6.1f} {first['inflight_read_bytes_per_sm'] / 1024:>7.1f}/"
              f"{first['littles_law_read_bytes_per_sm'] / 1024:<7.1f} "
              f"{first['read_amplification']:>6.2f} {first['bound']:6} {cfg_s}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", choices=tuple(ARCHS), default=["sm_89", "sm_90"])
    p.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=list(DTYPES))
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--subset", action="store_true",
                   help="only the calls the targets name (x >= 32 MB in bf16: the three largest)")
    p.add_argument("--details", type=Path, default=None,
                   help="also write every figure of the model and the SASS counts here")
    p.add_argument("--cuda-lib", type=Path, default=None,
                   help="library or object file with the CUDA kernels' cubins (default: the "
                        "installed fusionseg_kernels/_C*.so), e.g. a separate CMake build's "
                        "inception_dwconv3d_kernel.cu.o")
    p.add_argument("--quiet", action="store_true")
    opts = p.parse_args(argv)
    log = (lambda *a: None) if opts.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    report = build_report(opts.arch, opts.dtypes, opts.subset, log, opts.cuda_lib)
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        public = public_report(report)
        opts.json.write_text(json.dumps(public, indent=1, default=str))
    if opts.details:
        opts.details.write_text(json.dumps(report, indent=1, default=str))
    print_summary(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
