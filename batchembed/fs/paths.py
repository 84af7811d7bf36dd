"""Local paths as a user should see them in a message, and the output path checked before any work.

A job run from cron or a Makefile in another directory reads its relative paths from *that*
directory; a message that shows only ``data/docs`` hides the mistake. ``shown`` (from ``faults``, which
shows a machine fault's path the same way) adds the absolute path a relative one resolved to.
``check_output_path`` refuses, before anything is read or sent, an output path that is (or lies under) a
regular file: batchembed writes a directory there.
"""

from __future__ import annotations

from pathlib import Path

from batchembed.errors import ConfigError
from batchembed.faults import shown

__all__ = ["check_output_path", "shown"]


def check_output_path(path: str, key: str = "output.path") -> None:
    """Refuse a local output path that is a regular file, or has one among its parents (nothing is written)."""
    if "://" in path and not path.startswith("file://"):
        return
    where = Path(path.removeprefix("file://"))
    for part in (where, *where.parents):
        if part.is_dir():
            return
        if part.exists():
            what = "is a regular file" if part == where else f"lies under {part}, which is a regular file"
            raise ConfigError(
                f"{key} {shown(path)} {what}, not a directory: batchembed writes a directory of Parquet shards "
                f"there; set {key} to a directory (it is created if missing), e.g. --set {key}={where}.d"
            )
