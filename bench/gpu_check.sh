#!/usr/bin/env bash
# The GPU check (ENGINEERING.md, "The GPU machine"): on a bare GPU machine with its own python3
# (torch and triton preinstalled, no internet), in at most 5 minutes:
#   1. build and install the package for this GPU only (FUSIONSEG_CUDA_ARCH, default 9.0), while
#      Triton's kernels for the sweep compile in parallel processes (bench_gpu_kernels.py --precompile);
#   2. GPU tests (pytest -m gpu, 4 workers; FUSIONSEG_TRITON_AUTOTUNE=0 so the Triton tests
#      compile one config);
#   3. compute-sanitizer memcheck and racecheck on bench/sanitize_cuda.py, if that file exists;
#   4. the kernel sweep (bench/bench_gpu_kernels.py --quick; torch.compile baseline on the
#      largest shape in bf16 only, to stay in budget), whose outputs are checked against the
#      reference; its time limit is what is left of the budget;
#   5. bench/bench_network.py --device cuda, if that file exists and time is left;
#   6. fusionseg_kernels/ops/inception_dwconv3d/gpu_table.json from the sweep, for the backends
#      whose GPU tests passed;
#   7. a summary table (stage, status, seconds) and the sweep's table.
# Each stage has its own time limit and a failed stage does not stop the others.
# Results: bench/results/gpu_check_<UTC time>/ (and copied to $OUT when the device tool sets it).
#
#   bash bench/gpu_check.sh            # on the GPU machine, from the repository root
#   GPU_CHECK_DRY_RUN=1 bash bench/gpu_check.sh   # on a CPU machine: every stage in its CPU form
set -u
cd "$(dirname "$0")/.."
START=$(date +%s)
PY=${PYTHON:-python3}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUN_DIR=bench/results/gpu_check_$STAMP
mkdir -p "$RUN_DIR"
SUMMARY=$RUN_DIR/summary.txt
DRY=${GPU_CHECK_DRY_RUN:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-290}  # seconds for the whole check (ENGINEERING.md: at most 5 minutes)
export FUSIONSEG_CUDA_ARCH=${FUSIONSEG_CUDA_ARCH:-9.0}
export MAX_JOBS=${MAX_JOBS:-8}
export FUSIONSEG_COMMIT=${FUSIONSEG_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export PYTHONUNBUFFERED=1

declare -a STAGES=()
stage() {  # stage NAME LIMIT_S LOG CMD...: runs CMD with a time limit, records status and seconds
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s) ==" | tee -a "$SUMMARY"
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local status=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMEOUT"
  [ $rc -ne 0 ] && [ "$status" = ok ] && status="FAILED(rc=$rc)"
  STAGES+=("$(printf '%-22s %-14s %5ss  %s' "$name" "$status" "$dt" "$log")")
  tail -n 25 "$log"
  return $rc
}

{
  echo "gpu_check $STAMP commit $FUSIONSEG_COMMIT"
  if [ "$DRY" = 1 ]; then echo "DRY RUN on $(hostname): CPU forms of every stage"; fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
} 2>&1 | tee -a "$SUMMARY"

# 1. build (background) while Triton's sweep kernels compile in parallel processes
if [ "$DRY" = 1 ]; then
  stage build 60 "$RUN_DIR/build.log" $PY -c "import fusionseg_kernels; print(fusionseg_kernels.__file__)"
  BUILD_RC=$?
else
  # the build gets at most 150 s
  ( timeout --kill-after=10 150 $PY -m pip install --no-build-isolation --no-deps -e . \
      >"$RUN_DIR/build.log" 2>&1; echo $? >"$RUN_DIR/build.rc" ) &
  BUILD_PID=$!
  stage triton-precompile 100 "$RUN_DIR/precompile.log" \
    $PY bench/bench_gpu_kernels.py --precompile --jobs 8
  wait $BUILD_PID
  BUILD_RC=$(cat "$RUN_DIR/build.rc" 2>/dev/null || echo 1)
  STAGES+=("$(printf '%-22s %-14s %5ss  %s' build "$([ "$BUILD_RC" = 0 ] && echo ok || echo "FAILED(rc=$BUILD_RC)")" $(( $(date +%s) - START )) "$RUN_DIR/build.log")")
  tail -n 15 "$RUN_DIR/build.log"
fi
$PY -c "import fusionseg_kernels as f; print(f.build_info())" 2>&1 | tail -1 | tee -a "$SUMMARY"

# 2. GPU tests: which backends passed decides what the GPU table may record
PASSED=""
if [ "$DRY" = 1 ]; then
  stage gpu-tests 120 "$RUN_DIR/tests.log" $PY -m pytest -q -rs -m gpu tests/test_triton_op.py \
    --junitxml="$RUN_DIR/gpu_tests.xml" -p no:cacheprovider
else
  stage gpu-tests 90 "$RUN_DIR/tests.log" env FUSIONSEG_TRITON_AUTOTUNE=0 $PY -m pytest -q -rs -m gpu \
    tests --ignore=tests/interpreter -n 4 --junitxml="$RUN_DIR/gpu_tests.xml" -p no:cacheprovider
fi
PASSED=$($PY - "$RUN_DIR/gpu_tests.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
files = {"triton": "test_triton_op", "cuda": "test_cuda_backend"}
try:
    cases = list(ET.parse(sys.argv[1]).getroot().iter("testcase"))
except (OSError, ET.ParseError):
    cases = []
ok = []
for backend, module in files.items():
    mine = [c for c in cases if module in c.get("classname", "")]
    ran = [c for c in mine if c.find("skipped") is None]
    failed = [c for c in mine if c.find("failure") is not None or c.find("error") is not None]
    if ran and not failed:
        ok.append(backend)
    print(f"{backend}: {len(ran)} ran, {len(failed)} failed, {len(mine) - len(ran)} skipped", file=sys.stderr)
print(" ".join(ok))
EOF
)
echo "backends whose GPU tests passed: ${PASSED:-none}" | tee -a "$SUMMARY"

# 3. compute-sanitizer on the CUDA backend's small cases
if [ -f bench/sanitize_cuda.py ]; then
  if [ "$DRY" = 1 ] || ! command -v compute-sanitizer >/dev/null; then
    stage sanitize-cuda 60 "$RUN_DIR/sanitize.log" $PY bench/sanitize_cuda.py --device cpu
  else
    stage memcheck-cuda 30 "$RUN_DIR/memcheck.log" compute-sanitizer --tool memcheck --error-exitcode 3 \
      $PY bench/sanitize_cuda.py
    stage racecheck-cuda 40 "$RUN_DIR/racecheck.log" compute-sanitizer --tool racecheck --error-exitcode 3 \
      $PY bench/sanitize_cuda.py
  fi
fi

# 4. kernel sweep: what is left of the budget, keeping 35 s for the network benchmark
SWEEP_JSON=$RUN_DIR/sweep.json
LEFT=$(( BUDGET - 35 - ($(date +%s) - START) )); [ $LEFT -lt 45 ] && LEFT=45
if [ "$DRY" = 1 ]; then
  stage kernel-sweep 300 "$RUN_DIR/sweep.log" $PY bench/bench_gpu_kernels.py --smoke --out "$SWEEP_JSON"
else
  # the JSON is rewritten after every shape: a sweep cut by its limit keeps what it measured
  stage kernel-sweep $LEFT "$RUN_DIR/sweep.log" $PY bench/bench_gpu_kernels.py --quick \
    --compile-shapes 1 --compile-dtypes bf16 --out "$SWEEP_JSON"
fi

# 5. whole-network benchmark, if it exists and at least 25 s are left
if [ -f bench/bench_network.py ]; then
  LEFT=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$DRY" = 1 ]; then
    stage bench-network 120 "$RUN_DIR/network.log" $PY bench/bench_network.py --device cpu --quick
  elif [ $LEFT -ge 25 ]; then
    stage bench-network $LEFT "$RUN_DIR/network.log" $PY bench/bench_network.py --device cuda
  else
    STAGES+=("$(printf '%-22s %-14s %5ss  %s' bench-network "SKIPPED" 0 "budget spent")")
  fi
fi

# 6. GPU table from measured results (a dry run does not touch the package's table)
if [ -f "$SWEEP_JSON" ] && [ "$DRY" != 1 ]; then
  stage gpu-table 30 "$RUN_DIR/gpu_table.log" $PY bench/bench_gpu_kernels.py \
    --write-gpu-table "$SWEEP_JSON" --passed $PASSED
  cp fusionseg_kernels/ops/inception_dwconv3d/gpu_table.json "$RUN_DIR/" 2>/dev/null
fi

# 7. summary
{
  echo
  echo "stage                  status         time   log"
  for s in "${STAGES[@]}"; do echo "$s"; done
  echo "total $(( $(date +%s) - START )) s; GPU tests passed for: ${PASSED:-none}"
  if [ -f "$SWEEP_JSON" ]; then
    $PY - "$SWEEP_JSON" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"sweep on {r['meta']['device_name']} ({r['meta']['date_utc']}, commit {r['meta']['commit'][:12]}): "
      f"copy {r['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s")
print(f"{'dtype':5} {'mode':6} {'provider':9} {'geomean speedup':>15} {'slower calls':>12} "
      f"{'min %copy fwd>=32MB':>19} {'min %roofline':>13} correct")
for s in r["summary"]:
    if s["provider"] == "reference":
        continue
    gm = s.get("geomean_speedup_per_call")
    f1 = s.get("min_fraction_of_copy_x_ge_32MB")
    f2 = s.get("min_fraction_of_roofline")
    print(f"{s['dtype']:5} {s['mode']:6} {s['provider']:9} {'-' if gm is None else f'{gm:.2f}':>15} "
          f"{str(s.get('calls_slower_than_reference', '-')):>12} {'-' if f1 is None else f'{100 * f1:.0f}%':>19} "
          f"{'-' if f2 is None else f'{100 * f2:.0f}%':>13} {s['all_ok']}")
EOF
  fi
} 2>&1 | tee -a "$SUMMARY"

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  for f in summary.txt sweep.json gpu_table.json gpu_tests.xml tests.log sweep.log build.log network.log; do
    [ -f "$RUN_DIR/$f" ] && cp "$RUN_DIR/$f" "$OUT/"
  done
fi
