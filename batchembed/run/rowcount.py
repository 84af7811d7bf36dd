"""The row total of a run whose inputs do not say it up front: CSV and JSON Lines files counted in a
background thread while the run sends, so the progress bar and log lines get a total and an ETA.

Parquet files know their rows (footers); a CSV or JSON Lines file is counted by reading one column
of it as a run reads it (records, not lines, so the total matches the run's row numbers), through the
run's file cache, so a small file is still opened once per run. Rows already committed are left out, as
the run skips them.
The count stops when the run ends; a file it cannot read leaves the total unknown (the run itself says
what is wrong with it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from batchembed.errors import BatchEmbedError
from batchembed.input.files import SourceFile
from batchembed.input.read import iter_batches
from batchembed.input.units import Committed


class RowCount:
    """Counts the rows a run still has to do, in a daemon thread (``start``), for the progress total."""

    def __init__(self, sources: list[SourceFile], committed: Committed, column: str, extra: int = 0) -> None:
        self.sources = sources
        self.committed = committed
        self.column = column
        self.extra = extra  # rows of earlier failures this run retries
        self.total: int | None = None
        self._stop = threading.Event()
        self._known: dict[str, int | None] = {}  # small files' records, counted before the reading starts
        self._thread: threading.Thread | None = None

    def start(self, done: Callable[[int], None]) -> None:
        """Count in the background; ``done(total)`` is called once the total is known. Small files the run's
        cache will hold are counted first, here, before the reading starts: read into the cache now, they
        are never opened again (counted behind the reading, they would be: the reading drops what it passed)."""
        try:
            for src in self.sources:
                if src.rows is None and src.cache is not None and src.cache.holds_if_opened(src):
                    self._known[src.name] = self._records(src)
        except (BatchEmbedError, OSError, ValueError):
            return  # the run meets the same file and says what is wrong with it (no total)
        self._thread = threading.Thread(target=self._run, args=(done,), name="batchembed-rowcount", daemon=True)
        self._thread.start()

    def _run(self, done: Callable[[int], None]) -> None:
        try:
            total = self.count()
        except (BatchEmbedError, OSError, ValueError):
            return  # the run meets the same file and says what is wrong with it
        if total is not None:
            self.total = total
            done(total)

    def count(self) -> int | None:
        """Rows still to do over every input (None when stopped first)."""
        total = self.extra
        for src in self.sources:
            if src.rows is not None:
                rows = src.rows
            else:
                rows = self._known[src.name] if src.name in self._known else self._records(src)
            if rows is None:
                return None
            total += rows - sum(r.end - r.start for r in self.committed.ranges_of(src.name))
        return total

    def _records(self, src: SourceFile) -> int | None:
        """Records of one CSV or JSON Lines file (None when stopped)."""
        rows = 0
        for batch in iter_batches(src, [self.column]):
            if self._stop.is_set():
                return None
            rows += batch.num_rows
        return rows

    def stop(self) -> None:
        """Stop counting (the run has ended)."""
        self._stop.set()
