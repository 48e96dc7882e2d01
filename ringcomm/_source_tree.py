"""How ``ringcomm.transports``, ``ringcomm.layers`` and ``ringcomm.bench`` are found in a source
checkout that was not installed (``PYTHONPATH=checkout``): the floors live at the top of the
repository, and an install maps them under ``ringcomm`` (pyproject's ``package-dir``); this
finder does the same mapping for the checkout ``ringcomm`` was imported from.  Installed
copies never use it."""
from __future__ import annotations

import importlib.abc
import importlib.machinery
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
    """Add the finder once, right after the path finder: a wheel's own subpackages are found
    before it, and in a checkout it wins over an editable install of another checkout."""
    if any(isinstance(f, SourceTreeFinder) for f in sys.meta_path):
        return
    if not os.path.isfile(os.path.join(ROOT, "pyproject.toml")):
        return  # an installed copy: its subpackages are where the install put them
    at = next((i + 1 for i, f in enumerate(sys.meta_path)
               if f is importlib.machinery.PathFinder), len(sys.meta_path))
    sys.meta_path.insert(at, SourceTreeFinder())
