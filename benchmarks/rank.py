"""One rank of a benchmark: ``python -m ringcomm.bench.rank CONFIG_JSON`` (what ``-n`` starts).

Joins the ring of ``MLX_RANK``/``MLX_HOSTFILE`` once per implementation in the config, one
after the other (ringcomm, then gloo, then MLX: MLX's group cannot be closed, so its ports,
rank 0's first one being gloo's rendezvous, stay bound until the process ends), and on rank 0
appends every record to ``config.results`` as a JSON line as soon as it is measured, so that
the parent has whatever finished even if a later size fails.
Prints nothing on stdout: the parent owns the table.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from typing import Callable, Sequence

from ringcomm.transports.errors import ConfigError, RingcommError

from . import impls
from .measure import Record, sweep
from .options import DTYPES, Config

EXIT_CONFIG = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # as a shell reports Ctrl-C


def run(config: Config, records: list[Record] | None = None) -> list[Record]:
    """Every implementation's sweep on this rank; rank 0's records (other ranks' are equal),
    appended to ``records`` as they finish, so that the caller keeps them on an exception."""
    dtype = DTYPES[config.dtype]
    records = [] if records is None else records
    for name in sorted(config.impls, key=("ringcomm", "gloo", "mlx").index):
        impl = impls.create(name, config.transport, config.protocol, config.in_place,
                            config.dtype)
        keep = _keeper(records, config.results if impl.rank() == 0 else None)
        try:
            sweep(impl, config.ops, config.sizes, dtype, config.warmup, config.iters,
                  config.check, on_record=keep, progress_seconds=config.progress)
        finally:
            impl.close()
    return records


def _keeper(records: list[Record], path: str | None) -> Callable[[Record], None]:
    """Appends each record to ``records`` and, where ``path`` is set, to that file as a JSON
    line (one write per line, so that a stopped rank leaves whole lines)."""
    def keep(record: Record) -> None:
        records.append(record)
        if path is not None:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(dataclasses.asdict(record)) + "\n")
    return keep


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 1:
        sys.exit("usage: python -m ringcomm.bench.rank CONFIG_JSON (ringcomm-bench -n starts it)")
    try:
        run(Config.from_json(argv[0]))
    except ConfigError as e:
        print(f"ringcomm-bench: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except RingcommError as e:  # it names the rank, the peer and the call: no traceback
        print(f"ringcomm-bench: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:  # the launcher passed a stop on: what finished is written
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
