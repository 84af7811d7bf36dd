"""The journal of a writer that works under another run's lock (a Ray worker under its driver's): fenced.

Shards and small files of such a writer are checked against its fencing token before they become
visible (``store.fencing``); its journal segments were not, so a worker orphaned by a dead driver kept
putting segments into an output a new run owns, and left them there when it stopped (a unit's
journal is removed when the unit commits, and the whole journal when a run completes, but an orphan
writes after both). :class:`FencedJournalStore` checks the token when a segment is opened and before
frames are made durable (at most once per ``CHECK_SECONDS``): once the token no longer holds the
output, every segment this writer wrote is deleted (only its own: the run owning the output may
be journaling the same unit) and nothing more is written; ``LeaseLost`` says why, and the journal
stops (the run goes on until its own fenced commit stops it).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from batchembed.errors import OutputError
from batchembed.output.store.locks import LeaseLost, WriterLock

#: The fence is read at most this often (seconds) while segments are synced (a lock file, or one GET).
CHECK_SECONDS = 1.0


class FencedJournalStore:
    """A ``segments.JournalStore`` whose writing stops, and whose own segments go, once ``fence`` fails."""

    def __init__(self, inner: Any, fence: WriterLock, clock=time.monotonic) -> None:
        self.inner = inner
        self.fence = fence
        self.lost: LeaseLost | None = None
        self._written: list[Any] = []  # every segment this writer opened
        self._lock = threading.Lock()  # a check, a sync and the discarding never interleave
        self._clock = clock
        self._checked = -1e9

    def check(self, now: bool = False) -> None:
        """``LeaseLost`` once the fence no longer holds (then this writer's segments are deleted first);
        read at most once per ``CHECK_SECONDS`` unless ``now``. Called under ``_lock``."""
        if self.lost is not None:
            raise self.lost
        if not now and self._clock() - self._checked < CHECK_SECONDS:
            return
        try:
            self.fence.check()
        except LeaseLost as exc:
            self.lost = exc
            self._discard()
            raise
        self._checked = self._clock()

    def _discard(self) -> None:
        for segment in self._written:
            with contextlib.suppress(OSError, OutputError):  # best effort: the next run clears what stays
                segment.discard()

    def open_segment(self, unit: str) -> _FencedSegment:
        with self._lock:
            self.check(now=True)
            segment = self.inner.open_segment(unit)
            self._written.append(segment)
        return _FencedSegment(segment, self)

    def segments(self, unit: str) -> Iterator[bytes]:
        return self.inner.segments(unit)

    def readers(self, unit: str) -> list[Any]:
        return self.inner.readers(unit)

    def units(self) -> list[str]:
        return self.inner.units()

    def remove(self, unit: str) -> None:
        self.inner.remove(unit)

    def clear(self) -> None:
        self.inner.clear()

    def prune(self) -> None:
        self.inner.prune()


class _FencedSegment:
    """A segment whose frames are made durable only while the fence holds."""

    def __init__(self, inner: Any, store: FencedJournalStore) -> None:
        self.inner = inner
        self.store = store

    def append(self, frame: list) -> None:
        if self.store.lost is None:  # (a local frame is in the file at once: a lost fence deletes it at the sync)
            self.inner.append(frame)

    def sync(self) -> None:
        with self.store._lock:
            self.store.check()
            self.inner.sync()

    def close(self, sync: bool = True) -> None:
        try:
            if sync:
                with self.store._lock:
                    self.store.check(now=True)  # the last frames: put only if the fence still holds
                    self.inner.sync()
        finally:
            self.inner.close(sync=False)

    def discard(self) -> None:
        self.inner.discard()
