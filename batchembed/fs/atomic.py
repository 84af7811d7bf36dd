"""Atomic file replacement on a local disk: the one write-temp, fsync, rename, fsync-directory path.

Every file batchembed publishes on a local disk (shards, the manifest, ``_failed/``, ``_truncated/``,
``_report.json``, ``_SUCCESS``) goes through here, so after a crash (even a power loss) a file is
either its old version or its complete new one, never a torn mix:

1. the bytes go to ``NAME.tmp`` in the same directory (a rename never crosses file systems);
2. the temp file is flushed and fsynced (its data is on disk before its name is);
3. ``os.replace`` puts it over ``NAME`` in one step;
4. the directory is fsynced (the rename itself survives a power loss).

If writing fails, the temp file is removed. The temp name is fixed (``NAME.tmp``), not random, so
the orphan sweep (``opening.remove_orphans``) recognises a temp file a killed run left behind.
Object stores need none of this: a PUT is atomic, and they keep their own semantics.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

#: Suffix of the temp file a write goes to before its rename (``part-00000.parquet.tmp``).
TMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """The temp file next to ``path`` that a write goes to before it is renamed over ``path``."""
    return path.with_name(path.name + TMP_SUFFIX)


def fsync_dir(directory: Path) -> None:
    """Make a rename (or a new file) in ``directory`` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """fsync a file already written and closed (by a writer that owns its own handle, e.g. Parquet)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, path: Path, before_replace: Callable[[], None] | None = None) -> None:
    """Make the complete temp file ``tmp`` durable and rename it over ``path``.

    ``before_replace`` runs after the fsync and just before the rename: the crash tests' failpoint
    (``failpoints.failpoint``) kills the process exactly there.
    """
    fsync_file(tmp)
    if before_replace is not None:
        before_replace()
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: Path, before_replace: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield the temp path a streaming writer fills; on a clean exit publish it over ``path``.

    For writers that open the file themselves (Parquet, Arrow IPC). If the block or the publishing
    raises, the temp file is removed and ``path`` is left as it was.
    """
    tmp = temp_path(path)
    try:
        yield tmp
        publish(tmp, path, before_replace)
    except BaseException:
        with contextlib.suppress(OSError):  # the first error is the one to report
            tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes, before_replace: Callable[[], None] | None = None) -> None:
    """Replace the file ``path`` with ``data`` so that it appears whole or not at all (creates its directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, before_replace) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
