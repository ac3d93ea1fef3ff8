"""Benchmarks of the toolkit's cost (not part of the installed package): run from the repository
root, e.g. ``python -m benchmarks.erasure_cost --size tiny``. See ``benchmarks/README.md``."""
