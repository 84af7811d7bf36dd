"""Holding an output: the one-writer lock every store hands out (``WriterLock``), and the two ways a
writer learns it may not write (``OutputLocked`` before it starts, ``LeaseLost`` once it has lost its
holding). Kept apart from the store interface so the admission gate and fencing build on it alone."""

from __future__ import annotations

import abc
from typing import Any, Protocol

from batchembed.errors import OutputError


class OutputLocked(OutputError):
    """Another live run holds this output's lock or lease."""


class LeaseLost(OutputError):
    """This run no longer holds its lease (it expired and another run took it over)."""


class Written(Protocol):
    """What a committed shard reports: the fields of ``shard_writer.WrittenFile``."""

    name: str
    rows: int
    size: int
    checksum: str


class WriterLock(abc.ABC):
    """The one-writer lock a run holds on an output until it ends."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise ``LeaseLost`` unless this run still holds the lock (the fencing check)."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the lock up (idempotent)."""

    def token(self) -> Any:
        """The fencing token of this holding (``store.fencing.FenceToken``), for writers working under it."""
        raise NotImplementedError(f"{type(self).__name__} hands out no fencing token")
