"""The answer journal's writer (``Journal``): recover answers before sending, keep answers as they
arrive, drop a unit's journal at its commit; and what it asks of a task (``JournalCodec``), which alone
knows what an answer is.

The answer journal: every answer kept the moment it arrives, so a crash costs only the requests in flight.

Without it, everything answered for a shard that was not yet committed is lost with the process and
bought again. With it, each answered request (text keys and vectors, or pair keys and scores) is
appended to a journal of its unit as soon as the answer is accepted, and read back on the next run
*before anything is sent*: only rows without a durable answer are requested again.

The journal is an optimisation under the manifest, never the truth. Exactly-once still comes from
shard commits alone; a journal only saves requests. Hence:

* a torn or corrupt tail (a frame cut short by the kill, bytes that fail their CRC) is ignored;
* a journal written under another job fingerprint is discarded whole;
* the journal of a unit is removed right after its shard is committed (and, at start-up, any journal
  of a unit already committed), so disk use stays bounded by the units in flight.

Format: a unit's journal is a set of *segments*; a segment is a sequence of *frames*
``[u32 length][u32 crc32][Arrow IPC stream of one record batch]``. Each batch carries, in its schema
metadata, the job fingerprint's sha256, its kind (``answers``: key + answer column; ``sent``: keys of
a request about to be sent, to count rows re-sent after a crash), the input rows it covers and, for
the answers of a request, the tokens paid for them (``tokens``: counted in the unit whose request
bought them, 0 in the frames of other units it also answers), so a resumed unit's shard records the
tokens its killed runs bought as well as its own.

Storage sits behind ``JournalStore`` (``segments``: segment files locally, segment
objects on an object store). What a frame holds is the task's business: its :class:`JournalCodec`
(``task.journal_codec()``) turns a request into keys and answers and recovered answers back into a
piece; this module knows neither texts nor scores.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import pyarrow as pa

from batchembed.errors import OutputError
from batchembed.output.journal.frames import FORMAT_VERSION, encode_frame, unit_key
from batchembed.output.journal.kept import Kept
from batchembed.output.journal.recovery import Recovered, read_unit
from batchembed.output.journal.segments import FrameAt, JournalStore, SegmentWriter

if TYPE_CHECKING:
    from batchembed.stats import Stats

#: Frames the writer thread may have queued; past that the caller writes its frame itself. Bounds what
#: a kill -9 can lose beyond the requests in flight: answers accepted but not yet in the file.
MAX_BACKLOG = 2
#: Seconds between fsyncs of the segments being written (kill -9 loses nothing written; power loss this much).
SYNC_SECONDS = 1.0


class Resumed(NamedTuple):
    """A prepared piece after its unit's journal was read (``JournalCodec.resume``)."""

    requests: list  # what is left to send (the task's requests)
    rows_recovered: int  # input rows answered by the killed run's journal
    rows_resent: int  # rows about to be sent again although the killed run had sent them
    held: tuple[pa.RecordBatch, int] | None  # answers already held, to journal now (batch, rows)


class JournalCodec(Protocol):
    """How a task's answers go into the answer journal (this module's ``Journal``) and come back out.

    Keys identify an answer across runs: 16 bytes per work item (``fixed_size_binary(16)``)."""

    def bind(self, journal: Journal) -> None:
        """The run's journal, given once: a codec that writes answers itself as they are decoded (the embed
        task's ``keep``) keeps it; others have nothing to do with it."""
        ...

    def keys(self, request: Any) -> pa.Array:
        """The key of each item of ``request``."""
        ...

    def answers(self, request: Any) -> list[tuple[str, pa.RecordBatch, int]]:
        """An accepted request's answers as journal frames: (unit, batch of ``key`` + answer column, input
        rows covered). The request's own unit first; the embed task adds other units waiting for the
        same texts."""
        ...

    def resume(self, piece: Any, requests: list, recovered: Recovered | None) -> Resumed:
        """Called once per piece a run prepares: fill the answers found in ``recovered`` (a
        ``Recovered`` of the unit's journal, or None) and say what is left to send and what
        the piece already holds to journal at once (the embed task's memo hits)."""
        ...


class Journal:
    """The runner's side: recover answers before sending, record answers as they arrive, drop at commit.

    A request's answer is written by ``keep`` where it was decoded, before the answer is accepted, and
    the frame is where its piece reads the vectors back when it is written (``kept.Kept``). The keys of a
    request about to be sent are written by the event loop itself (a few KB) before it goes out. Other
    frames (answers shared with other units, memo hits) are appended (one ``writev`` into the page
    cache) on a writer thread a few milliseconds after they are handed over; when the writer thread has
    ``MAX_BACKLOG`` frames queued, the caller writes its frame itself, so at most that many accepted
    answers are ever at risk. The fsyncs against power loss run on another thread, at most once a
    second. A unit's removal at commit goes through the writer thread too, so it always comes after the
    unit's last queued frame.
    """

    def __init__(
        self, store: JournalStore, fingerprint: str, codec: JournalCodec, stats: Stats, committed: set[str]
    ) -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.codec = codec
        self.stats = stats
        self._writers: dict[str, SegmentWriter] = {}
        self._recovered: dict[str, Recovered | None] = {}
        self._last_sync = time.monotonic()
        self._lock = threading.Lock()
        self._appender = ThreadPoolExecutor(1, thread_name_prefix="batchembed-journal")
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="batchembed-journal-sync")
        self._pending: Future | None = None
        self._backlog = 0  # frames queued for the writer thread
        self._backlog_lock = threading.Lock()
        self.error: str | None = None  # why the journal stopped writing, if it did
        codec.bind(self)
        for unit in store.units():
            if unit in committed:  # the run died between the manifest write and this removal
                store.remove(unit)

    # -------------------------------------------------------------------------- before sending

    def resume(self, piece: Any, requests: list) -> list:
        """A prepared piece's requests minus the answers its unit's journal already holds (reader thread)."""
        chunk = piece.chunk
        unit = unit_key(chunk.unit.name)
        if unit not in self._recovered:
            rec = read_unit(self.store, unit, self.fingerprint)
            if rec is None and unit in self.store.units():
                self.store.remove(unit)  # another job's, or nothing readable: start it afresh
            self._recovered[unit] = rec
            if rec is not None:  # what the killed runs paid for this unit's answers counts in its shard
                chunk.unit.tokens += rec.tokens
        rec = self._recovered[unit]
        resumed = self.codec.resume(piece, requests, rec)
        if chunk.last and rec is not None:
            rec.close()  # the unit is fully read: release its segments (key stays: loaded)
            self._recovered[unit] = None
        self.stats.rows_recovered += resumed.rows_recovered
        self.stats.rows_resent += resumed.rows_resent
        if resumed.held is not None:  # memo hits: kept now, the memo dies with the process
            self._submit(chunk.unit.name, resumed.held[0], "answers", resumed.held[1])
        return resumed.requests

    # --------------------------------------------------------------------------------- writing

    def sent(self, request: Any) -> None:
        """Note the keys of a request about to be sent (so a later run can count what it re-sends).

        Written here and now (a few KB, the one frame the event loop writes), not queued: the requests in
        flight at a kill are exactly the ones whose note must not be lost."""
        batch = pa.record_batch({"key": self.codec.keys(request)})
        meta = {"version": FORMAT_VERSION, "fingerprint": self.fingerprint, "kind": "sent", "rows": 0}
        self._append(unit_key(request.piece.chunk.unit.name), batch, meta)

    def keep(self, shard: str, batch: pa.RecordBatch, rows: int, tokens: int) -> Kept:
        """Write an answers frame now, on the calling thread (where the answer was decoded),
        and say where it lies, so its piece reads the vectors from there (``kept``). ``tokens``: what its
        request paid, counted in this unit."""
        meta = {"version": FORMAT_VERSION, "fingerprint": self.fingerprint, "kind": "answers", "rows": rows}
        if tokens:
            meta["tokens"] = tokens
        at = self._append(unit_key(shard), batch, meta)
        return Kept(at, None if at is not None else batch)

    def answered(self, request: Any) -> None:
        """Keep the answers of a request the moment they are accepted (in every unit waiting for them;
        the request's own unit only if ``keep`` did not already)."""
        own = request.piece.chunk.unit.name
        for unit, batch, rows in self.codec.answers(request):
            self._submit(unit, batch, "answers", rows, request.spent if unit == own else 0)
            if unit == own:
                own = None  # the tokens are counted once, in the unit whose request paid them

    def _submit(self, shard: str, batch: pa.RecordBatch, kind: str, rows: int, tokens: int = 0) -> None:
        if not batch.num_rows:
            return
        meta = {"version": FORMAT_VERSION, "fingerprint": self.fingerprint, "kind": kind, "rows": rows}
        if tokens:
            meta["tokens"] = tokens
        with self._backlog_lock:
            queue = self._backlog < MAX_BACKLOG
            if queue:
                self._backlog += 1
        if queue:
            self._appender.submit(self._append_queued, unit_key(shard), batch, meta)
        else:  # the writer thread is behind: write this one here, so a kill never loses more than a few
            self._append(unit_key(shard), batch, meta)

    def _append_queued(self, unit: str, batch: pa.RecordBatch, meta: dict[str, Any]) -> None:
        try:
            self._append(unit, batch, meta)
        finally:
            with self._backlog_lock:
                self._backlog -= 1

    def _append(self, unit: str, batch: pa.RecordBatch, meta: dict[str, Any]) -> FrameAt | None:
        """Append one frame to ``unit``'s segment; where it lies (None: buffered, or the journal stopped)."""
        if self.error is not None:
            return None
        frame = encode_frame(batch, meta)
        with self._lock:
            try:
                writer = self._writers.get(unit)
                if writer is None:
                    writer = self._writers[unit] = self.store.open_segment(unit)
                return writer.append(frame)
            except OSError as exc:  # a full disk, say: the job goes on, only without this optimisation
                self.error = f"{exc.strerror or exc} ({exc.filename or unit})"
                return None
            except OutputError as exc:  # a fenced writer's fence lost (``fenced``): it journals no more
                self.error = str(exc)
                return None

    def tick(self) -> None:
        """Called periodically: fsync (on the journal's thread) what was appended, at most once a second."""
        if time.monotonic() - self._last_sync >= SYNC_SECONDS and (self._pending is None or self._pending.done()):
            self._last_sync = time.monotonic()
            self._pending = self._thread.submit(self._sync)

    def _sync(self) -> None:
        with self._lock:
            writers = list(self._writers.values())
        for writer in writers:
            try:
                writer.sync()
            except (OSError, OutputError) as exc:  # the job goes on, only without this optimisation
                self.error = self.error or str(exc)

    def committed(self, shard: str) -> None:
        """The unit's shard is in the manifest: its journal is no longer needed (waits for its removal)."""
        self._appender.submit(self._drop, unit_key(shard)).result()

    def _drop(self, unit: str) -> None:
        with self._lock:
            writer = self._writers.pop(unit, None)
        if writer is not None:
            writer.close(sync=False)  # deleted right away: nothing to make durable
        self.store.remove(unit)

    def close(self, complete: bool = False) -> None:
        """Sync and close every segment; with ``complete`` delete every journal left."""
        for rec in self._recovered.values():
            if rec is not None:
                rec.close()
        self._appender.shutdown(wait=True)
        self._thread.shutdown(wait=True)
        with self._lock:
            writers = list(self._writers.values())
            self._writers.clear()
        for writer in writers:
            try:
                writer.close()
            except (OSError, OutputError) as exc:
                self.error = self.error or str(exc)
        if complete:
            self.store.clear()
        else:  # a --shard part: other parts may still journal their units; only an empty _journal/ goes
            self.store.prune()
