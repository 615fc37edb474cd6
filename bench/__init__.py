"""Benchmarks of the engine, run by hand (``python -m bench.run_all``), never asserted in tests.

Each benchmark measures its figure as a ratio inside one run (both sides on the same machine,
model and device, minutes apart at most) and merges its section into
``bench/results/engine-<profile>-<device>.json`` plus a readable ``.md`` next to it.
"""
