"""``python -m ringcomm.bench``: the same command as ``ringcomm-bench``."""
from .cli import main

main(prog="python -m ringcomm.bench")
