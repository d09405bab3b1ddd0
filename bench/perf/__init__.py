"""Benchmarks: `python -m bench.perf <area>` prints figures and ratios measured in one run."""
