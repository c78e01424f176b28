"""The benchmarks: one harness (`bench.harness`), one runner (``python -m bench.run``, what
``make bench`` calls), one module per op or pipeline, the report generator and the
pytest-benchmark trend suite (bench/benchmarks). Run every module from the repository root as
``python -m bench.<module>``. The library never imports this package."""
