"""Parity against the official implementations: scripts that run the official code next to ours with the same
seeded weights (converted by our converters) and write the fixtures that tests/benchmarks/test_parity_*.py check on
every commit without the official code. See benchmarks/parity/common.py for the shared procedure."""
