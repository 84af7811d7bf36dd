"""The machine's faults (disk full, permission denied, read-only file system, a path under a regular
file) as one line a user can act on, instead of a traceback.

Committed shards and the manifest are replaced atomically, so such a fault never loses committed
work: the message says what went wrong where, what to do, and that the same command resumes.
"""

from __future__ import annotations

import errno
import os
import re

_ADVICE = {
    errno.ENOSPC: "the disk is full: free space there (or move that path to another disk)",
    errno.EDQUOT: "the disk quota is used up: free space there (or move that path to another disk)",
    errno.EACCES: "permission denied: make it writable for this user (or set output.path elsewhere)",
    errno.EPERM: "operation not permitted: make it writable for this user (or set output.path elsewhere)",
    errno.EROFS: "the file system is read-only: set output.path on a writable disk",
    errno.ENOTDIR: "a part of that path is a regular file, not a directory: set output.path elsewhere",
    errno.EISDIR: "that path is a directory where a file is expected: remove it or set output.path elsewhere",
    errno.EIO: "the disk reported an I/O error: check the device",
    errno.EPIPE: "the other end of a pipe or connection went away (broken pipe): if batchembed's output is piped "
    "into another program, that program exited before reading it all",
}

_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)
_PATH_IN_TEXT = re.compile(r"file '([^']+)'")


def fault_errno(exc: OSError) -> int | None:
    """The errno of ``exc``; pyarrow's OSErrors carry it only in their text ("[errno 28] ...")."""
    if exc.errno:
        return exc.errno
    found = _ERRNO_IN_TEXT.search(str(exc))
    return int(found.group(1)) if found else None


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` for a message: as given, plus what it resolved to when it is relative ("data/x (= /srv/data/x)"):
    a job run from cron or make in another directory reads its relative paths from *that* directory."""
    text = str(path)
    if "://" in text or os.path.isabs(text):
        return text
    return f"{text} (= {os.path.abspath(text)})"


def describe_fault(exc: OSError, resumable: bool = True) -> str:
    """One line: the path, the cause, what to do, and (``resumable``: a run) that committed work is kept."""
    code = fault_errno(exc)
    path = exc.filename
    if path is None:
        found = _PATH_IN_TEXT.search(str(exc))
        path = found.group(1) if found else None
    cause = _ADVICE.get(code) if code is not None else None
    if cause is None:
        cause = (os.strerror(code) if code else str(exc).splitlines()[0] if str(exc) else type(exc).__name__).rstrip(
            "."
        )
    where = f"{shown(path)}: " if path else ""
    if not resumable:
        return f"{where}{cause}."
    return f"{where}{cause}. Committed shards are kept; run the same command again to resume."


def with_path(exc: OSError, path: os.PathLike[str] | str) -> OSError:
    """``exc`` naming ``path`` when it names no file itself (pyarrow's write errors do not)."""
    if exc.filename is not None or _PATH_IN_TEXT.search(str(exc)):
        return exc
    code = fault_errno(exc)
    return OSError(code, os.strerror(code) if code else str(exc), str(path))
