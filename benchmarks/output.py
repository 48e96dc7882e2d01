"""``--output FILE``: the records as JSON lines (.json, .jsonl) or CSV (.csv), one per
implementation, op and size, with the same keys in both."""
from __future__ import annotations

import csv
import dataclasses
import json

from .measure import Record

FIELDS = [f.name for f in dataclasses.fields(Record)]


def write(path: str, records: list[Record]) -> None:
    """Write ``records`` in the format the file name's suffix asks for."""
    rows = [dataclasses.asdict(r) for r in records]
    with open(path, "w", encoding="utf-8", newline="") as f:
        if path.lower().endswith(".csv"):
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)  # an unchecked result's wrong (None) is an empty cell
        else:
            for row in rows:
                f.write(json.dumps(row) + "\n")
