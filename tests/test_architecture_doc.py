"""docs/architecture.md is the map of the code: its "Rooms" table names every module, and nothing that is gone."""

from __future__ import annotations

import re

from tests.conftest import ROOT

PACKAGE = ROOT / "batchembed"


def _rooms() -> set[str]:
    """The names in the first column of the Rooms table (a cell may name several, each in backticks)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## Rooms", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def _modules() -> set[str]:
    """Every module as the table names it: ``x.py``, ``pkg/x.py``, and ``pkg/`` for a package's ``__init__``."""
    out = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.endswith("/__init__.py"):
            rel = rel.removesuffix("__init__.py")
        out.add(rel)
    return out


def test_every_module_has_its_row():
    missing = sorted(_modules() - _rooms())
    assert not missing, f"docs/architecture.md's Rooms table does not name: {', '.join(missing)}"


def test_every_row_names_a_module_that_exists():
    modules = _modules() | {m.rsplit("/", 1)[0] + "/__init__.py" for m in _modules() if m.endswith("/")}
    gone = sorted(_rooms() - modules - {m + "__init__.py" for m in modules if m.endswith("/")})
    assert not gone, f"docs/architecture.md names modules that do not exist: {', '.join(gone)}"
