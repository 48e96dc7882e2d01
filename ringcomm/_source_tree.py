"""How ``ringcomm.transports``, ``ringcomm.layers`` and ``ringcomm.bench`` are found in a source
checkout that was not installed (``PYTHONPATH=checkout``): the floors live at the top of the
repository, and an install maps them under ``ringcomm`` (pyproject's ``package-dir``); this
finder does the same mapping for the checkout.  Installed copies never need it."""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

FOLDERS = {"ringcomm.transports": "transports", "ringcomm.layers": "layers",
           "ringcomm.bench": "benchmarks"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Finds the three mapped packages in the checkout's top-level folders."""

    def find_spec(self, name, path=None, target=None):
        folder = FOLDERS.get(name)
        init = os.path.join(ROOT, folder or "", "__init__.py")
        if folder is None or not os.path.isfile(init):
            return None
        return importlib.util.spec_from_file_location(
            name, init, submodule_search_locations=[os.path.dirname(init)])


def install() -> None:
    """Add the finder once, after the normal ones (an install's own mapping wins)."""
    if not any(isinstance(f, SourceTreeFinder) for f in sys.meta_path):
        sys.meta_path.append(SourceTreeFinder())
