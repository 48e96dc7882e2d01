"""``python -m ringcomm``: versions, transports, settings and a two-rank self-test (doctor)."""
from __future__ import annotations

import argparse
import sys

from .doctor import report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ringcomm",
        description="Check this machine for ringcomm: versions, usable transports and RDMA "
                    "devices, the settings in force, and a two-rank loopback self-test.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--no-self-test", action="store_true",
                        help="skip the two-rank self-test (which starts two Python processes)")
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__
        print(f"ringcomm {__version__}")
        return 0
    return report(run_self_test=not args.no_self_test)


if __name__ == "__main__":
    sys.exit(main())
