# Quickstart: `make test` and `make bench` create .venv/, install torch and the package (its C++/CUDA
# extension built against that torch, --no-build-isolation), then run. Repeated runs reuse the
# environment and rebuild only what changed (stamps below + the persistent CMake folder build/cmake).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Keep freed memory (SPEC §6): page faults on fresh allocations otherwise dominate CPU timings.
RETAIN_MALLOC := MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736
BUILD_INPUTS := $(shell find csrc -type f) CMakeLists.txt setup.py pyproject.toml

.PHONY: all env build test test-fast test-interpreter bench bench-cpu clean distclean

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

# Everything but the Triton-interpreter tests, then those in their own process (TRITON_INTERPRET
# is read when kernels are decorated).
test: build
	$(PY) -m pytest tests --ignore=tests/interpreter -q -rs
	@if [ -d tests/interpreter ]; then TRITON_INTERPRET=1 $(PY) -m pytest tests/interpreter -q -rs; fi

test-fast: build
	$(PY) -m pytest tests --ignore=tests/interpreter -q -x -m "not slow"

bench: build
	$(RETAIN_MALLOC) $(PY) bench/run.py

bench-cpu: build
	$(RETAIN_MALLOC) $(PY) bench/bench_cpu_op.py

clean:
	rm -rf build fusionseg_kernels/_C*.so $(VENV)/.build-stamp

distclean: clean
	rm -rf $(VENV)
