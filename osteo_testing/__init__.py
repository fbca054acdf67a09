"""Test and benchmark helpers (synthetic fixtures, reference implementations).

Nothing in production imports this package (``tests/test_architecture.py`` enforces it):
it exists so tests and ``benchmarks/`` share one copy of each fixture.
"""
