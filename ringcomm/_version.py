"""``ringcomm.__version__``: the installed package's version, else pyproject.toml's.

pyproject.toml is the one place the version is written; an install records it in the
package metadata.  A checkout used without installing it (``PYTHONPATH=checkout``) has no
metadata, so there the version is read from the checkout's pyproject.toml.  It is computed
on first use: importing ``importlib.metadata`` costs ~0.1 s, which no rank should pay unasked.
"""
from __future__ import annotations

import re
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        return installed("ringcomm")
    except PackageNotFoundError:
        return from_pyproject(PYPROJECT) or "0+unknown"


def from_pyproject(path: Path) -> str | None:
    """``[project] version`` of ``path`` when it describes ringcomm, else None."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    table = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if table is None or not re.search(r'^name\s*=\s*"ringcomm"\s*$', table.group(1), re.M):
        return None
    found = re.search(r'^version\s*=\s*"([^"]+)"\s*$', table.group(1), re.M)
    return found.group(1) if found else None
