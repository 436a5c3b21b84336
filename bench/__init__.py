"""Benchmarks of the serving cluster: listeners per generator, generator speed, and a soak.

Run with ``python -m bench`` (``make bench``); see ``python -m bench --help``.
"""
