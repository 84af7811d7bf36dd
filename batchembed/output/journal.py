"""The answer journal: every answer kept the moment it arrives, so a crash costs only the requests in flight.

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

Storage sits behind ``JournalStore`` (:mod:`batchembed.output.journal_store`: segment files locally, segment
objects on an object store). What a frame holds is the task's business: its :class:`JournalCodec`
(``task.journal_codec()``) turns a request into keys and answers and recovered answers back into a
piece; this module knows neither texts nor scores.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchembed.errors import OutputError
from batchembed.output.journal_store import JournalStore, SegmentReader, SegmentWriter, journal_store

if TYPE_CHECKING:
    from batchembed.run.progress import Stats
    from batchembed.tasks import JournalCodec, Piece, Request

__all__ = ["Journal", "Recovered", "answered", "answered_rows", "journal_store", "read_unit"]

FORMAT_VERSION = 1
META_KEY = b"batchembed.journal"
#: Frames the writer thread may have queued; past that the caller writes its frame itself. Bounds what
#: a kill -9 can lose beyond the requests in flight: answers accepted but not yet in the file.
MAX_BACKLOG = 2
#: Seconds between fsyncs of the segments being written (kill -9 loses nothing written; power loss this much).
SYNC_SECONDS = 1.0
_FRAME = struct.Struct("<II")  # payload length, crc32 of the payload


def unit_key(shard_name: str) -> str:
    """Journal name of a unit: its shard name without ``.parquet`` (``part-00007``)."""
    return shard_name.removesuffix(".parquet")


# ----------------------------------------------------------------------------------------- frames


def encode_frame(batch: pa.RecordBatch, meta: dict[str, Any]) -> list:
    """One frame as [header, payload]: length and crc32, then an Arrow IPC stream of ``batch`` (``meta`` in
    its schema). Two parts so that writing it copies nothing more (``os.writev``)."""
    batch = batch.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    payload = sink.getvalue()
    return [_FRAME.pack(payload.size, zlib.crc32(payload)), payload]


def decode_frames(data: bytes) -> Iterator[tuple[pa.RecordBatch, dict[str, Any]]]:
    """Frames of a segment in order; stops quietly at the first torn or corrupt one (the tail a kill cut)."""
    buf = pa.py_buffer(data)
    pos = 0
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        start, end = pos + _FRAME.size, pos + _FRAME.size + length
        if end > len(data) or zlib.crc32(memoryview(data)[start:end]) != crc:
            return
        try:
            reader = pa.ipc.open_stream(buf.slice(start, length))
            batches = list(reader)
            meta = json.loads(reader.schema.metadata[META_KEY])
        except (pa.ArrowException, KeyError, TypeError, ValueError):
            return
        for batch in batches:
            yield batch, meta
        pos = end


# ---------------------------------------------------------------------------------------- reading


class Recovered:
    """What an earlier run left in a unit's journal: an index of its answers, read a frame at a time.

    Only the keys and where each answer lies (segment, frame, row) are held; ``take`` reads the frames
    holding the answers asked for, so a resume holds about one piece's answers, as a first run does,
    never the unit's whole (a 100k x 1024 unit is 400 MB of vectors). ``close`` releases the segments."""

    def __init__(self, readers: list[SegmentReader]) -> None:
        self.keys: list[bytes] = []  # key of each answer, in journal order
        self.sent: set[bytes] = set()  # keys sent without a durable answer
        self.rows = 0  # input rows the answers covered when they were written
        self.tokens = 0  # tokens paid for these answers by the runs that wrote them
        # key -> (reason, tokens and characters before, characters kept) of answers for a cut text
        self.cuts: dict[bytes, tuple] = {}
        self._readers = readers
        self._frames: list[tuple[int, int, int, int]] = []  # (segment, payload offset, length, batch)
        self._frame_of: list[np.ndarray] = []  # per answers batch: its frame index, once per answer
        self._row_of: list[np.ndarray] = []  # ... and the answer's row in it
        self._types: dict[str, pa.DataType] | None = None  # answer columns, the same in every frame
        self._index: dict[bytes, int] | None = None
        self._where: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, segment: int, offset: int, length: int, number: int, batch: pa.RecordBatch) -> bool:
        """Index one answers batch; False if its answer columns differ from the others' (not one job's)."""
        types = {f.name: f.type for f in batch.schema if f.name not in ("key", CUT_FIELD.name)}
        if self._types is None:
            self._types = types
        elif types != self._types:
            return False
        keys = batch.column("key").to_pylist()
        if CUT_FIELD.name in batch.schema.names:
            self.cuts.update(_cuts(keys, batch.column(CUT_FIELD.name)))
        self._frame_of.append(np.full(len(keys), len(self._frames), np.int64))
        self._row_of.append(np.arange(len(keys), dtype=np.int64))
        self._frames.append((segment, offset, length, number))
        self.keys.extend(keys)
        return True

    def find(self, keys: list[bytes]) -> np.ndarray:
        """Position of each key's answer (its last one in the journal), -1 where there is none."""
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.keys)}
        index = self._index
        return np.fromiter((index.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))

    def take(self, column: str, positions: np.ndarray) -> np.ndarray:
        """The answers at ``positions`` (from ``find``) of an answer column: vectors (n, dim), scores (n,).

        Reads each frame holding some of them once, and keeps none."""
        positions = np.asarray(positions, dtype=np.int64)
        if self._where is None:
            frame_of = np.concatenate(self._frame_of) if self._frame_of else np.zeros(0, np.int64)
            row_of = np.concatenate(self._row_of) if self._row_of else np.zeros(0, np.int64)
            self._where, self._frame_of, self._row_of = (frame_of, row_of), [], []
        frame_of, row_of = self._where
        frames = frame_of[positions]
        order = np.argsort(frames, kind="stable")
        bounds = np.flatnonzero(np.diff(frames[order])) + 1
        out: np.ndarray | None = None
        for group in np.split(order, bounds) if len(order) else []:
            values = _numpy(self._read(int(frames[group[0]])).column(column))
            if out is None:
                out = _empty((len(positions), *values.shape[1:]), values.dtype)
            out[group] = values[row_of[positions[group]]]
        return out if out is not None else np.zeros(0, dtype=np.float32)

    def values(self, column: str) -> np.ndarray:
        """A whole answer column (empty if the journal holds only sent keys): for tests and small units."""
        return self.take(column, np.arange(len(self.keys)))

    def _read(self, frame: int) -> pa.RecordBatch:
        segment, offset, length, number = self._frames[frame]
        payload = self._readers[segment].read_at(offset, length)
        return list(pa.ipc.open_stream(payload))[number]

    def close(self) -> None:
        """Release the segments (the unit is fully read, or the run ends)."""
        for reader in self._readers:
            reader.close()
        self._readers = []


def _empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array in Arrow's allocator rather than the C heap, whose piece-sized blocks freed
    in another order than they came would stay in the process (a resume's memory above a first run's)."""
    buffer = pa.allocate_buffer(int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


#: An optional column of an answers frame: how the text behind each answer was cut (null: not cut).
CUT_FIELD = pa.field(
    "cut",
    pa.struct(
        [
            ("reason", pa.string()),
            ("tokens_before", pa.int64()),
            ("chars_before", pa.int64()),
            ("chars_after", pa.int64()),
        ]
    ),
)


def cut_array(cuts: list[tuple | None]) -> pa.Array:
    """The ``cut`` column of an answers frame from (reason, tokens before, chars before, chars after) or None."""
    names = [f.name for f in CUT_FIELD.type]
    return pa.array([dict(zip(names, c, strict=True)) if c else None for c in cuts], CUT_FIELD.type)


def _cuts(keys: list[bytes], column: pa.Array) -> dict[bytes, tuple]:
    """{key: cut} of the answers whose text was cut."""
    return {k: tuple(c.values()) for k, c in zip(keys, column.to_pylist(), strict=True) if c is not None}


def _numpy(col: pa.Array) -> np.ndarray:
    """A journal column as numpy: fixed-size lists become (n, dim)."""
    if pa.types.is_fixed_size_list(col.type):
        dim = col.type.list_size
        flat = col.values.to_numpy(zero_copy_only=False)[col.offset * dim :]
        return flat[: len(col) * dim].reshape(-1, dim)
    return col.to_numpy(zero_copy_only=False)


def scan_frames(stream: pa.NativeFile, size: int) -> Iterator[tuple[int, int, list[tuple[pa.RecordBatch, dict]]]]:
    """(payload offset, payload length, its batches and meta) of a segment's frames, read sequentially;
    stops quietly at the first torn or corrupt one (the tail a kill cut). One frame in memory at a time."""
    pos = 0
    while pos + _FRAME.size <= size:
        head = stream.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return
        length, crc = _FRAME.unpack(head)
        if pos + _FRAME.size + length > size:
            return
        payload = stream.read_buffer(length)
        if len(payload) < length or zlib.crc32(payload) != crc:
            return
        try:
            reader = pa.ipc.open_stream(payload)
            batches = list(reader)
            meta = json.loads(reader.schema.metadata[META_KEY])
        except (pa.ArrowException, KeyError, TypeError, ValueError):
            return
        yield pos + _FRAME.size, length, [(batch, meta) for batch in batches]
        pos += _FRAME.size + length


def read_unit(store: JournalStore, unit: str, fingerprint: str) -> Recovered | None:
    """A unit's journal indexed (see ``Recovered``; the caller closes it), or None if it has none, holds
    nothing usable, or belongs to another fingerprint."""
    readers = store.readers(unit)
    rec = Recovered(readers)
    usable = True
    for segment, reader in enumerate(readers):
        with reader.stream() as stream:
            for offset, length, batches in scan_frames(stream, reader.size):
                for number, (batch, meta) in enumerate(batches):
                    if meta.get("version") != FORMAT_VERSION or meta.get("fingerprint") != fingerprint:
                        usable = False
                    elif meta.get("kind") == "answers":
                        usable = rec.add(segment, offset, length, number, batch)
                        rec.rows += int(meta.get("rows", 0))
                        rec.tokens += int(meta.get("tokens", 0))
                    elif meta.get("kind") == "sent":
                        rec.sent.update(batch.column("key").to_pylist())
                    if not usable:
                        rec.close()
                        return None
    if not rec.keys and not rec.sent:
        rec.close()
        return None
    rec.sent.difference_update(rec.keys)
    return rec


def answered_rows(store: JournalStore, unit: str, fingerprint: str) -> int:
    """Input rows answered in ``unit``'s journal but not yet in a shard (0 if unusable); for ``status``."""
    return answered(store, unit, fingerprint)[0]


def answered(store: JournalStore, unit: str, fingerprint: str) -> tuple[int, int]:
    """Input rows answered in ``unit``'s journal but not yet in a shard, and the tokens paid for those
    answers ((0, 0) if unusable); for ``status``."""
    rec = read_unit(store, unit, fingerprint)
    if rec is None:
        return 0, 0
    rec.close()
    return rec.rows, rec.tokens


# ---------------------------------------------------------------------------------------- the run


class Journal:
    """The runner's side: recover answers before sending, record answers as they arrive, drop at commit.

    Frames are encoded and appended (one ``writev`` into the page cache) on a writer thread a few
    milliseconds after the answer is accepted: the event loop, which is what limits throughput,
    only builds the batch. From then on a kill -9 no longer loses the answer. When the writer
    thread has ``MAX_BACKLOG`` frames queued, the caller writes its frame itself, so at most that
    many accepted answers are ever at risk. The fsyncs
    against power loss run on another thread, at most once a second. A unit's removal at commit
    goes through the writer thread too, so it always comes after the unit's last frame.
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
        for unit in store.units():
            if unit in committed:  # the run died between the manifest write and this removal
                store.remove(unit)

    # -------------------------------------------------------------------------- before sending

    def resume(self, piece: Piece, requests: list[Request]) -> list[Request]:
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

    def sent(self, request: Request) -> None:
        """Note the keys of a request about to be sent (so a later run can count what it re-sends).

        Written here and now (a few KB), not queued: the requests in flight at a kill are exactly the
        ones whose note must not be lost."""
        batch = pa.record_batch({"key": self.codec.keys(request)})
        meta = {"version": FORMAT_VERSION, "fingerprint": self.fingerprint, "kind": "sent", "rows": 0}
        self._append(unit_key(request.piece.chunk.unit.name), batch, meta)

    def answered(self, request: Request) -> None:
        """Keep the answers of a request the moment they are accepted (in every unit waiting for them)."""
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

    def _append(self, unit: str, batch: pa.RecordBatch, meta: dict[str, Any]) -> None:
        if self.error is not None:
            return
        frame = encode_frame(batch, meta)
        with self._lock:
            try:
                writer = self._writers.get(unit)
                if writer is None:
                    writer = self._writers[unit] = self.store.open_segment(unit)
                writer.append(frame)
            except OSError as exc:  # a full disk, say: the job goes on, only without this optimisation
                self.error = f"{exc.strerror or exc} ({exc.filename or unit})"

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
