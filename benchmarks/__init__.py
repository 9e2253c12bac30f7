"""Benchmarks (not timed tests): each prints our figure, the peer's from the same run, their ratio
and a quality figure, and writes benchmarks/results/<name>.json."""
