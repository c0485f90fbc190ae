"""Measured runs: `python -m benchmarks.<name> [--quick] [--data DIR]` writes out/bench/<name>.json."""
