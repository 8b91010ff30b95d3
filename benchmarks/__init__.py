"""Benchmarks: run as ``python -m benchmarks.latency`` and ``python -m benchmarks.replay``."""
