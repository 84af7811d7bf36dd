"""Did-you-mean for names a user typed (columns, job-file keys, fields): the stdlib's ``difflib``.

Every message that refuses a name it does not know names the near match, if there is one, so a typo
(``modul`` for ``module``) is fixed from the message alone."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice most like ``name`` (case-insensitively), or None when none is close enough."""
    options = list(dict.fromkeys(choices))
    by_lower = {c.lower(): c for c in options}
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """ "; did you mean 'module'?" for the closest choice, or "" when nothing is close."""
    found = closest(name, choices)
    return f"; did you mean {found!r}?" if found is not None and found != name else ""


def listing(names: Iterable[str], most: int = 30) -> str:
    """Names for a message, all of them up to ``most``, then how many more: "a, b, c" / "a, b, ... (120 in all)"."""
    names = list(names)
    if len(names) <= most:
        return ", ".join(names) or "none"
    return ", ".join(names[:most]) + f", ... ({len(names)} in all)"
