"""Benchmarks and the faithful baselines they compare against (importable as a package)."""
