"""Crash-test hooks: kill this process at a named step when ``BATCHEMBED_FAILPOINT`` names it.

The resume tests kill a real process at an exact step of the commit protocol (for instance between
writing the new manifest and renaming it into place), of a refresh, of the batch tier; the names are
part of the test contract and never change.
"""

from __future__ import annotations

import os
import signal


def failpoint(name: str) -> None:
    """SIGKILL this process at ``name`` when ``BATCHEMBED_FAILPOINT`` says so; nothing otherwise."""
    if os.environ.get("BATCHEMBED_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
