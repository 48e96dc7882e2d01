"""Benchmarks in the spirit of nccl-tests: ``python -m ringcomm.bench -n 2 -b 8 -e 64M``."""
