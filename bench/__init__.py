"""Benchmarks of Simdeck, each against a baseline measured in the same run.

Run them with ``python -m bench [NAMES...] [--quick]``; see docs/benchmarks.md.
"""
