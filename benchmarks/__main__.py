"""``python -m benchmarks``: the same command as ``ringcomm-bench``."""
from .cli import main

main(prog="python -m benchmarks")
