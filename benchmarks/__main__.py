"""``python -m ringcomm.bench``: the same command as ``ringcomm-bench``."""
import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python starts: nothing measured
    print("python -m ringcomm.bench: stopped by SIGINT while starting; nothing was measured",
          file=sys.stderr)
    sys.exit(130)

main(prog="python -m ringcomm.bench")
