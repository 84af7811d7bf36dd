"""Fencing tokens: a writer that holds no lock of its own (a Ray worker) writes only under its driver's.

The driver's lock or lease names the run holding it (``run``, a random id written with the holder's
host and pid: ``_lease/job.lock`` locally, ``_lease/job.json`` in a bucket). The driver hands that
id down with each slice (:class:`FenceToken`); the worker's store checks, before any of its shards
becomes visible (the rename locally, the completion of the upload in a bucket) and before any small
file it writes, that the output's lock is still held by that run (:class:`TokenFence`). A worker left
over from a dead driver therefore stops with ``LeaseLost`` once a new run owns the output, or once
the old lock is free or expired, instead of writing into an output it no longer belongs to.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from batchembed.output.store.base import OutputStore
from batchembed.output.store.locks import LeaseLost, WriterLock


@dataclass(frozen=True)
class FenceToken:
    """Which lock (``key``: ``_lease/job``) and which holding of it (``run``) a worker writes under."""

    key: str
    run: str


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holds(holder: dict[str, Any] | None, token: FenceToken, expires: bool) -> str | None:
    """None if ``holder`` (a lock's content) is the live holding ``token`` names, else why it is not.

    ``expires``: the holding ends at ``holder["until"]`` (a lease); a local lock ends with its process
    (checked by pid on this host; another host's lock on a shared disk is trusted while it is held)."""
    if not holder or holder.get("run") != token.run:
        return "another run holds the output now"
    try:
        if expires and time.time() >= float(holder["until"]):
            return "the driver's lease expired (the driver was stopped or cut off)"
        if not expires and holder.get("host") == socket.gethostname() and not _alive(int(holder["pid"])):
            return "the driver that started this worker is gone"
    except (KeyError, TypeError, ValueError):
        return "the output's lock cannot be read"
    return None


class TokenFence(WriterLock):
    """The check of a worker that writes under its driver's lock (``token``); it holds nothing itself."""

    def __init__(self, store: OutputStore, token: FenceToken) -> None:
        self.store = store
        self.token = token

    def check(self) -> None:
        """``LeaseLost`` unless the driver's run still holds the output's lock."""
        holder, expires = self.store.read_lock(self.token.key)
        why = holds(holder, self.token, expires)
        if why:
            raise LeaseLost(
                f"{self.store.uri}: this worker was started by a run that no longer holds the output ({why}); "
                "it stops without writing. The run holding the output now carries the job on."
            )

    def release(self) -> None:
        """Nothing to release: the driver holds the lock."""


def fence_with(store: OutputStore, token: FenceToken) -> None:
    """Make ``store`` write under another process's lock (a Ray worker under its driver's): every fencing
    check verifies that ``token``'s holding still holds the output."""
    store.lock = TokenFence(store, token)
