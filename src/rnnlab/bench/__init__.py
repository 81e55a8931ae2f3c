"""Benchmarks; one module each (``long_range``: the pathological tasks)."""
