"""Benchmarks: `python -m bench` runs them all, `python -m bench append` one of them."""
