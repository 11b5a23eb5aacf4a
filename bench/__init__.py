"""Benchmarks and evaluations: they print figures, they never assert timings."""
