"""Benchmarks: scripts that print figures (run as `python bench/NAME.py`)."""
