"""Benchmark logic and the reference implementations the benchmarks and tests compare against."""
