"""Who writes an output right now: the runs that hold its lock (locally) or its lease (in a bucket).

Read without taking or changing anything, for ``status`` ("a run holds the output now"), ``verify``
("the job is still running") and a ``--shard`` part's last word (another part still running, or
stopped). Locally a lock is an ``flock`` on ``_lease/<name>.lock``: it is held exactly when the
kernel lists an flock on that file (``/proc/locks``; where there is no ``/proc``, a shared
non-blocking probe, released at once). In a bucket a lease is ``_lease/<name>.json``: it is held
while its term runs and its holder is not a dead (or zombie) process on this host — the rule a run
applies before taking it over.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchembed.output.layout import LEASE_DIR
from batchembed.output.store.base import OutputStore
from batchembed.output.store.local import LocalStore, read_holder

_PART = re.compile(r"shard-(\d+)-of-(\d+)$")


@dataclass(frozen=True)
class Writer:
    """A run holding one of the output's locks or leases now."""

    lease: str  # "_lease/job", "_lease/shard-0001-of-0003"
    who: str  # "pid 42 on host h1, started ..." as the refusal message names it
    part: tuple[int, int] | None  # the ``--shard I/N`` part it writes, None for a whole run


def live_writers(store: OutputStore) -> list[Writer]:
    """Every run holding a lock or lease of ``store`` now (sorted by lease name; [] if none)."""
    found = _local(store.directory) if isinstance(store, LocalStore) else _objects(store)
    return sorted(found, key=lambda w: w.lease)


def part_writer(writers: list[Writer], part: tuple[int, int]) -> Writer | None:
    """The run writing ``part`` among ``writers``, if any."""
    return next((w for w in writers if w.part == part), None)


def describe_writers(writers: list[Writer]) -> str:
    """ "pid 42 on host h1, started ... (part 1/3); ..." for messages."""
    return "; ".join(w.who + (f" (part {w.part[0]}/{w.part[1]})" if w.part else "") for w in writers)


def _writer(name: str, who: str) -> Writer:
    match = _PART.search(name)
    part = (int(match.group(1)), int(match.group(2))) if match else None
    return Writer(f"{LEASE_DIR}/{name}", who, part)


# ---------------------------------------------------------------------------------------- local


def _local(directory: Path) -> list[Writer]:
    found = []
    held = _flocked()
    for path in sorted((directory / LEASE_DIR).glob("*.lock")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_ino in held if held is not None else _probe(fd):
                found.append(_writer(path.stem, read_holder(fd)))
        finally:
            os.close(fd)
    return found


def _flocked() -> set[int] | None:
    """The inode of every file an flock is held on (``/proc/locks``); None without it.

    Inodes only: the device ``/proc/locks`` names is the lock's inode's, which on overlay file
    systems (containers) is not the ``st_dev`` a ``stat`` of the path reports."""
    try:
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    held = set()
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":  # "->" marks a waiter; POSIX/OFD locks are not ours
            continue
        try:
            held.add(int(fields[5].rsplit(":", 1)[1]))
        except ValueError:
            continue
    return held


def _probe(fd: int) -> bool:
    """Whether another process holds an flock on ``fd``'s file (a shared probe, released at once)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


# -------------------------------------------------------------------------------------- buckets


def _objects(store: Any) -> list[Writer]:
    # (obstore, the cloud extra: only for an output in a bucket)
    from batchembed.fs.buckets import STORE_ERRORS, obstore_module
    from batchembed.output.store.lease import describe_holder, lease_expired

    obstore = obstore_module()
    try:
        names = [m["path"] for m in obstore.list(store.client, prefix=LEASE_DIR + "/").collect()]
    except STORE_ERRORS:
        return []
    found = []
    for name in sorted(names):
        base = name.rsplit("/", 1)[-1]
        if not base.endswith(".json"):
            continue
        raw = store.read_bytes(name)
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        if isinstance(doc, dict) and not lease_expired(doc):
            found.append(_writer(base.removesuffix(".json"), describe_holder(doc)))
    return found
