"""The ``batchembed`` command runs as where pandas is not installed, even where it is.

batchembed never hands pandas an object nor asks for one, yet pyarrow imports it at its first array
whenever it is installed (its pandas shim and its converter of Python sequences both try, and neither has
a switch): 0.25-0.3 s of start-up and ~35 MB of every command, 7% of a 100k-row run. Every library the
command uses (pyarrow, polars, deltalake, lancedb, Ray's core, tqdm) holds pandas optional, so the
process behaves as on a machine without it. Only the installed command does this (``cli.console``); a
program calling ``batchembed.cli.main`` in its own process keeps its pandas.
"""

from __future__ import annotations

import importlib.abc
import sys

_NAME = "pandas"


class _Hidden(importlib.abc.MetaPathFinder):
    """Finds ``pandas`` (and its submodules) nowhere, as an import system without it would."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == _NAME or fullname.startswith(_NAME + "."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def hide_pandas() -> bool:
    """Make ``import pandas`` fail in this process from now on as if it were not installed; False (nothing
    done) when it is imported already, as then the libraries that would import it have it anyway."""
    if _NAME in sys.modules or any(isinstance(f, _Hidden) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _Hidden())
    return True
