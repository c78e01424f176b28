# Quickstart: `make test` and `make bench` create .venv/, install torch and the package (its C++/CUDA
# extension built against that torch, --no-build-isolation), then run. Repeated runs reuse the
# environment and rebuild only what changed (stamps below + the persistent CMake folder build/cmake).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Keep freed memory: page faults on fresh allocations otherwise dominate CPU timings. Idle OpenMP
# threads spin on their own core (a sleeping one can take ~8 ms to wake on a small VM; see
# bench/harness.py STABLE_THREADS, which bench/run.py sets for its own CPU timing jobs).
RETAIN_MALLOC := MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736
STABLE_THREADS := OMP_WAIT_POLICY=ACTIVE OMP_PROC_BIND=close OMP_PLACES=cores
BUILD_INPUTS := $(shell find csrc -type f) CMakeLists.txt setup.py pyproject.toml

.PHONY: all env build lint test test-fast test-interpreter bench bench-cpu bench-trend bench-compare clean distclean

all: test

$(VENV)/.deps-stamp: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

env: $(VENV)/.deps-stamp

$(VENV)/.build-stamp: $(VENV)/.deps-stamp $(BUILD_INPUTS)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.build-stamp

# The lint (ruff, configured in pyproject.toml), everything but the Triton-interpreter tests, then
# those in their own process (TRITON_INTERPRET is read when kernels are decorated).
test: build
	$(PY) -m ruff check .
	$(PY) -m pytest tests --ignore=tests/interpreter -q -rs
	@if [ -d tests/interpreter ]; then TRITON_INTERPRET=1 $(PY) -m pytest tests/interpreter -q -rs; fi

lint: env
	$(PY) -m ruff check .
	$(VENV)/bin/hadolint container/Dockerfile

test-fast: build
	$(PY) -m pytest tests --ignore=tests/interpreter -q -x -m "not slow"

# Benchmarks. `make bench`: every benchmark this machine can run, then one report in
# reports/<UTC time>-<device>/ (its path printed last); BENCH_ARGS are `python -m bench.run`'s options
# (--full: full GPU sweep and the paper's case sizes). The trend suite (pytest-benchmark) stores
# runs in BENCH_STORAGE; bench-compare fails when a benchmark's min time is > 10 % above BASELINE
# (a stored run's number; default: the latest stored run), and exits 3 ("inconclusive") when the
# machine was not quiet. Both wait up to WAIT_QUIET seconds for a quiet machine first.
BENCH_ARGS ?=
BENCH_STORAGE ?= .benchmarks
BASELINE ?=
# seconds `make bench` and `make bench-compare` wait for a quiet machine before timing
WAIT_QUIET ?= 180
BENCH_SUITE := $(PY) -m pytest bench/benchmarks --benchmark-only -p no:cacheprovider \
	--benchmark-storage=file://$(abspath $(BENCH_STORAGE)) --benchmark-json=reports/benchmark.json

bench: build
	$(RETAIN_MALLOC) $(PY) -m bench.run --wait-quiet $(WAIT_QUIET) $(BENCH_ARGS)

bench-cpu: build
	$(RETAIN_MALLOC) $(STABLE_THREADS) $(PY) -m bench.bench_cpu_op

bench-trend: build
	@mkdir -p reports
	$(RETAIN_MALLOC) $(STABLE_THREADS) $(BENCH_SUITE) --benchmark-autosave

bench-compare: build
	@mkdir -p reports
	$(RETAIN_MALLOC) $(STABLE_THREADS) $(PY) -m bench.compare --wait-quiet $(WAIT_QUIET) -- \
		--benchmark-storage=file://$(abspath $(BENCH_STORAGE)) --benchmark-compare$(if $(BASELINE),=$(BASELINE)) \
		--benchmark-compare-fail=min:10%

clean:
	rm -rf build fusionseg_kernels/_C*.so $(VENV)/.build-stamp

distclean: clean
	rm -rf $(VENV)
