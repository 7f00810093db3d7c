"""Benchmarks (``pathsentry bench``): measured, printed, never asserted in tests."""
