#!/usr/bin/env bash
# The GPU check: on a bare GPU machine with its own python3 (torch and triton preinstalled, no
# internet), in at most 5 minutes (GPU_CHECK_BUDGET_S, default 285 s), what matters first:
#   1. build and install the package for this GPU only (FUSIONSEG_CUDA_ARCH, default 9.0) in the
#      background, while Triton's bf16 kernels for the largest calls compile in parallel
#      processes (bench_gpu_kernels.py --precompile) and the Triton correctness subset runs
#      (forward and every gradient in fp32 and fp16/bf16 against the float64 reference, and the
#      network conformance fixture);
#   2. the bf16 sweep of the network's largest calls (reference, torch.compile(reference),
#      triton, cuda; forward and forward+backward; the JSON is rewritten after every shape);
#   3. the CUDA correctness subset (as in 1, once the build is done);
#   4. compute-sanitizer memcheck and racecheck on bench/sanitize_cuda.py (their logs kept);
#   5. bench/bench_network.py --device cuda --quick;
#   6. with what is left: the fp16/fp32 sweep of the same calls, then the remaining GPU tests;
#   7. fusionseg_kernels/ops/inception_dwconv3d/gpu_table.json from the bf16 sweep, for the
#      backends whose correctness subset passed;
#   8. a summary (stage, status, seconds, the sweeps' tables), printed by an EXIT trap whatever
#      happened before.
# Each stage has its own time limit, cut to what is left of the budget (a stage with under 5 s
# is skipped), and a failed stage does not stop the others. Only python3 with torch, triton and
# pytest is needed (no pytest plugins; without pytest the test stages are reported SKIPPED).
# Results: bench/results/gpu_check_<UTC time>/ (every log, the sanitizer logs included), copied
# to $OUT when the device tool sets it.
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
BUDGET=${GPU_CHECK_BUDGET_S:-285}  # seconds for the whole check (at most 5 minutes)
export FUSIONSEG_CUDA_ARCH=${FUSIONSEG_CUDA_ARCH:-9.0}
export MAX_JOBS=${MAX_JOBS:-8}
export FUSIONSEG_COMMIT=${FUSIONSEG_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export PYTHONUNBUFFERED=1
BIG_SHAPES=${GPU_CHECK_BIG_SHAPES:-4}  # the sweep's first part: the N largest distinct calls

declare -a STAGES=()
record() { STAGES+=("$(printf '%-22s %-14s %5ss  %s' "$1" "$2" "$3" "$4")"); }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
lim() {  # lim NOMINAL RESERVE: NOMINAL seconds, or less so that RESERVE seconds stay for later stages
  local l=$(( $(left) - $2 )); [ $l -gt $1 ] && l=$1; echo $l; }
stage() {  # stage NAME LIMIT_S LOG CMD...: runs CMD with a time limit, records status and seconds
  local name=$1 limit=$2 log=$3; shift 3
  if [ "$limit" -lt 5 ]; then record "$name" SKIPPED 0 "budget spent"; return 99; fi
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s) ==" | tee -a "$SUMMARY"
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local status=ok
  { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && status="TIMEOUT"
  [ $rc -ne 0 ] && [ "$status" = ok ] && status="FAILED(rc=$rc)"
  record "$name" "$status" "$dt" "$log"
  tail -n 15 "$log"
  return $rc
}
passed_backends() {  # the backends with tests run and none failed in the given junit files
  $PY - "$@" <<'EOF'
import sys, xml.etree.ElementTree as ET
cases = []
for path in sys.argv[1:]:
    try:
        cases += list(ET.parse(path).getroot().iter("testcase"))
    except (OSError, ET.ParseError):
        pass
ok = []
for backend in ("triton", "cuda"):
    mine = [c for c in cases if backend in (c.get("classname", "") + c.get("name", "")).lower()]
    ran = [c for c in mine if c.find("skipped") is None]
    failed = [c for c in mine if c.find("failure") is not None or c.find("error") is not None]
    if ran and not failed:
        ok.append(backend)
    print(f"{backend}: {len(ran)} ran, {len(failed)} failed, {len(mine) - len(ran)} skipped", file=sys.stderr)
print(" ".join(ok))
EOF
}

summary() {
  {
    echo
    echo "stage                  status         time   log"
    for s in "${STAGES[@]}"; do echo "$s"; done
    echo "total $(( $(date +%s) - START )) s; correctness subset passed for: ${PASSED:-none}"
    for j in "$RUN_DIR"/sweep_*.json; do
      [ -f "$j" ] || continue
      $PY - "$j" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[1]}: {r['meta']['device_name']} ({r['meta']['date_utc']}, commit {r['meta']['commit'][:12]}), "
      f"copy {r['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s, complete: {r.get('complete')}")
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
    done
  } 2>&1 | tee -a "$SUMMARY"
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$RUN_DIR"/*.txt "$RUN_DIR"/*.log "$RUN_DIR"/*.json "$RUN_DIR"/*.xml "$OUT/" 2>/dev/null
  fi
}
PASSED=""
trap summary EXIT

{
  echo "gpu_check $STAMP commit $FUSIONSEG_COMMIT"
  if [ "$DRY" = 1 ]; then echo "DRY RUN on $(hostname): CPU forms of every stage"; fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
} 2>&1 | tee -a "$SUMMARY"
HAVE_PYTEST=1
$PY -c "import pytest" 2>/dev/null || { HAVE_PYTEST=0; echo "pytest is not installed: test stages are skipped" | tee -a "$SUMMARY"; }
have_sanitizer() { [ "$DRY" != 1 ] && command -v compute-sanitizer >/dev/null; }

# Tests (pytest node ids; selected by id and -k, not -m: the conformance table's tests carry no
# gpu marker). The correctness subset per backend: the conformance table (forward and every
# gradient against the float64 reference, fp32/fp64/fp16/bf16 cases) and a few GPU tests.
NET_FIXTURE="tests/models/test_models.py::test_conformance_tiny_float32"  # the network on its conformance fixture
TRITON_SUBSET="tests/ops/test_conformance.py $NET_FIXTURE tests/ops/test_edge_cases.py tests/ops/test_triton_op.py::test_gpu_float32_matches_reference tests/ops/test_triton_op.py::test_gpu_low_precision tests/ops/test_triton_norm_op.py"
CUDA_SUBSET="tests/ops/test_conformance.py $NET_FIXTURE tests/ops/test_edge_cases.py tests/ops/test_cuda_norm_op.py"
PYTEST_OPTS="-q -rs -p no:cacheprovider"

# 1. build (background) while the Triton kernels compile and the Triton subset runs
if [ "$DRY" = 1 ]; then
  stage build 60 "$RUN_DIR/build.log" $PY -c "import fusionseg_kernels; print(fusionseg_kernels.__file__)"
  BUILD_RC=$?
else
  ( timeout --kill-after=10 150 $PY -m pip install --no-build-isolation --no-deps -e . \
      >"$RUN_DIR/build.log" 2>&1; echo $? >"$RUN_DIR/build.rc" ) &
  BUILD_PID=$!
  stage triton-precompile 75 "$RUN_DIR/precompile.log" \
    $PY -m bench.bench_gpu_kernels --precompile --jobs 8 --dtypes bf16 --shapes "$BIG_SHAPES"
fi

# 1b. correctness subset, Triton (needs no build: the kernels compile at first call)
if [ "$HAVE_PYTEST" = 1 ]; then
  if [ "$DRY" = 1 ]; then
    stage correct-triton 120 "$RUN_DIR/correct_triton.log" $PY -m pytest $PYTEST_OPTS \
      $TRITON_SUBSET -k triton --junitxml="$RUN_DIR/correct_triton.xml"
  else
    stage correct-triton 70 "$RUN_DIR/correct_triton.log" env FUSIONSEG_TRITON_AUTOTUNE=0 \
      $PY -m pytest $PYTEST_OPTS $TRITON_SUBSET -k triton --junitxml="$RUN_DIR/correct_triton.xml"
  fi
else
  record correct-triton SKIPPED 0 "no pytest"
fi

if [ "$DRY" != 1 ]; then
  wait $BUILD_PID
  BUILD_RC=$(cat "$RUN_DIR/build.rc" 2>/dev/null || echo 1)
  record build "$([ "$BUILD_RC" = 0 ] && echo ok || echo "FAILED(rc=$BUILD_RC)")" $(( $(date +%s) - START )) "$RUN_DIR/build.log"
  tail -n 10 "$RUN_DIR/build.log"
fi
$PY -c "import fusionseg_kernels as f; print(f.build_info())" 2>&1 | tail -1 | tee -a "$SUMMARY"

# 2. bf16 sweep of the largest calls first (the JSON is rewritten after every shape; the Triton
#    rows are checked against the reference in the sweep itself)
if [ "$DRY" = 1 ]; then
  stage sweep-bf16 300 "$RUN_DIR/sweep_bf16.log" $PY -m bench.bench_gpu_kernels --smoke --dtypes bf16 \
    --shapes "$BIG_SHAPES" --out "$RUN_DIR/sweep_bf16.json"
else
  stage sweep-bf16 $(lim 80 60) "$RUN_DIR/sweep_bf16.log" $PY -m bench.bench_gpu_kernels --quick --dtypes bf16 \
    --shapes "$BIG_SHAPES" --compile-shapes 1 --out "$RUN_DIR/sweep_bf16.json"
fi

# 3. correctness subset, CUDA
if [ "$HAVE_PYTEST" = 1 ]; then
  stage correct-cuda $([ "$DRY" = 1 ] && echo 120 || lim 45 30) "$RUN_DIR/correct_cuda.log" \
    $PY -m pytest $PYTEST_OPTS $CUDA_SUBSET -k cuda --junitxml="$RUN_DIR/correct_cuda.xml"
fi
PASSED=$(passed_backends "$RUN_DIR/correct_triton.xml" "$RUN_DIR/correct_cuda.xml")
echo "backends whose correctness subset passed: ${PASSED:-none}" | tee -a "$SUMMARY"

# 4. compute-sanitizer on the CUDA backend's small cases, logs kept
if [ -f bench/sanitize_cuda.py ]; then
  if have_sanitizer; then
    stage memcheck-cuda $(lim 30 20) "$RUN_DIR/memcheck.log" compute-sanitizer --tool memcheck --error-exitcode 3 \
      --log-file "$RUN_DIR/memcheck_sanitizer.log" $PY -m bench.sanitize_cuda
    stage racecheck-cuda $(lim 40 15) "$RUN_DIR/racecheck.log" compute-sanitizer --tool racecheck --error-exitcode 3 \
      --log-file "$RUN_DIR/racecheck_sanitizer.log" $PY -m bench.sanitize_cuda
  else
    stage sanitize-cpu 60 "$RUN_DIR/sanitize.log" $PY -m bench.sanitize_cuda --device cpu
    record racecheck-cuda SKIPPED 0 "no compute-sanitizer (or dry run)"
  fi
fi

# 5. whole-network benchmark
if [ -f bench/bench_network.py ]; then
  if [ "$DRY" = 1 ]; then
    stage bench-network 120 "$RUN_DIR/network.log" $PY -m bench.bench_network --device cpu --quick
  else
    stage bench-network $(lim 60 10) "$RUN_DIR/network.log" $PY -m bench.bench_network --device cuda --quick
  fi
fi

# 6. with what is left: fp16/fp32 sweep of the largest calls, then the remaining GPU tests
if [ "$DRY" = 1 ]; then
  stage sweep-fp16-fp32 120 "$RUN_DIR/sweep_rest.log" $PY -m bench.bench_gpu_kernels --smoke --dtypes fp32 \
    --shapes 2 --out "$RUN_DIR/sweep_rest.json"
else
  stage sweep-fp16-fp32 $(lim 120 10) "$RUN_DIR/sweep_rest.log" $PY -m bench.bench_gpu_kernels --quick \
    --dtypes fp16 fp32 --shapes "$BIG_SHAPES" --compile-shapes 0 --out "$RUN_DIR/sweep_rest.json"
  if [ "$HAVE_PYTEST" = 1 ]; then
    stage gpu-tests-rest $(lim 300 8) "$RUN_DIR/tests_rest.log" env FUSIONSEG_TRITON_AUTOTUNE=0 \
      $PY -m pytest $PYTEST_OPTS -m gpu tests --ignore=tests/interpreter --junitxml="$RUN_DIR/gpu_tests.xml"
  fi
fi

# 7. GPU table from measured results (a dry run does not touch the package's table)
if [ -f "$RUN_DIR/sweep_bf16.json" ] && [ "$DRY" != 1 ]; then
  stage gpu-table 10 "$RUN_DIR/gpu_table.log" $PY -m bench.bench_gpu_kernels \
    --write-gpu-table "$RUN_DIR/sweep_bf16.json" --passed $PASSED
  cp fusionseg_kernels/ops/inception_dwconv3d/gpu_table.json "$RUN_DIR/" 2>/dev/null
fi
# 8. the summary: the EXIT trap
