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
a request about to be sent, to count rows re-sent after a crash) and the input rows it covers.

Storage sits behind ``JournalStore``. The local store appends frames to one segment file per unit and
run (``_journal/part-00007/000001.seg``): each frame is written with one ``write`` as it arrives (it
survives ``kill -9`` at once: the page cache outlives the process) and fsynced in groups, about once
a second, against power loss. An object store, which has no appends, implements the same interface by
buffering frames and putting each group as one small object written once (``sync``), removed at commit.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from batchembed.atomic import fsync_dir
from batchembed.errors import OutputError

if TYPE_CHECKING:
    from batchembed.progress import Stats
    from batchembed.store.base import OutputStore
    from batchembed.tasks import Piece, Request, Task
    from batchembed.units import Chunk

JOURNAL_DIR = "_journal"
FORMAT_VERSION = 1
META_KEY = b"batchembed.journal"
SEGMENT_SUFFIX = ".seg"
#: Frames the writer thread may have queued; past that the caller writes its frame itself. Bounds what
#: a kill -9 can lose beyond the requests in flight: answers accepted but not yet in the file.
MAX_BACKLOG = 2
#: Seconds between fsyncs of the segments being written (kill -9 loses nothing written; power loss this much).
SYNC_SECONDS = 1.0
_FRAME = struct.Struct("<II")  # payload length, crc32 of the payload


# ---------------------------------------------------------------------------------------- storage


class SegmentWriter(Protocol):
    """One segment of one unit's journal, being written by this run."""

    def append(self, frame: list) -> None:
        """Add a frame (its parts: header and payload buffers). Locally it is in the file when this returns."""
        ...

    def sync(self) -> None:
        """Make the frames appended so far durable (fsync; on an object store: put them as one object)."""
        ...

    def close(self, sync: bool = True) -> None:
        """Release the segment, after a sync unless ``sync`` is False (the journal is being deleted)."""
        ...


class JournalStore(Protocol):
    """Where journal segments live: a directory, or (issue #13) a prefix of an object store."""

    def open_segment(self, unit: str) -> SegmentWriter:
        """A new segment of ``unit``'s journal, after (and never overwriting) the existing ones."""
        ...

    def segments(self, unit: str) -> Iterator[bytes]:
        """The bytes of each existing segment of ``unit``, oldest first."""
        ...

    def units(self) -> list[str]:
        """Units that have a journal."""
        ...

    def remove(self, unit: str) -> None:
        """Delete ``unit``'s journal (after its shard is committed, or when it cannot be used)."""
        ...

    def clear(self) -> None:
        """Delete every journal (the job is complete)."""
        ...


class _LocalSegment:
    """An append-only segment file: one ``write`` per frame, fsync on ``sync``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._dirty = False
        self._closing = threading.Lock()
        fsync_dir(path.parent)

    def append(self, frame: list) -> None:
        total = sum(len(memoryview(part)) for part in frame)
        written = os.writev(self._fd, frame)
        if written < total:  # a short write (rare): write the rest byte-exactly
            rest = memoryview(b"".join(bytes(memoryview(p)) for p in frame))[written:]
            while rest:
                rest = rest[os.write(self._fd, rest) :]
        self._dirty = True

    def sync(self) -> None:
        with self._closing:  # never fsync a descriptor that close() is releasing (it could be reused)
            if self._dirty and self._fd >= 0:
                self._dirty = False
                os.fsync(self._fd)

    def close(self, sync: bool = True) -> None:
        if sync:
            self.sync()
        with self._closing:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class LocalJournalStore:
    """Journals under ``<output>/_journal/<unit>/NNNNNN.seg``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, unit: str) -> Path:
        return self.root / unit

    def open_segment(self, unit: str) -> _LocalSegment:
        directory = self._dir(unit)
        if not directory.exists():
            directory.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root)
        numbers = [int(p.stem) for p in directory.glob("*" + SEGMENT_SUFFIX) if p.stem.isdigit()]
        return _LocalSegment(directory / f"{max(numbers, default=0) + 1:06d}{SEGMENT_SUFFIX}")

    def segments(self, unit: str) -> Iterator[bytes]:
        paths = sorted(self._dir(unit).glob("*" + SEGMENT_SUFFIX))
        for path in paths:
            try:
                yield path.read_bytes()
            except FileNotFoundError:
                continue

    def units(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def remove(self, unit: str) -> None:
        shutil.rmtree(self._dir(unit), ignore_errors=True)

    def clear(self) -> None:
        """Delete the whole journal directory."""
        shutil.rmtree(self.root, ignore_errors=True)


class _ObjectSegment:
    """Frames buffered in memory; each ``sync`` puts what was added since as one object written once."""

    def __init__(self, store: OutputStore, prefix: str, first: int) -> None:
        self.store = store
        self.prefix = prefix
        self.number = first
        self._frames: list[bytes] = []
        self._lock = threading.Lock()

    def append(self, frame: list) -> None:
        data = b"".join(bytes(memoryview(part)) for part in frame)
        with self._lock:
            self._frames.append(data)

    def sync(self) -> None:
        with self._lock:
            frames, self._frames = self._frames, []
            number, self.number = self.number, self.number + 1
        if frames:
            self.store.write_bytes(f"{self.prefix}/{number:06d}{SEGMENT_SUFFIX}", b"".join(frames))

    def close(self, sync: bool = True) -> None:
        if sync:
            self.sync()
        with self._lock:
            self._frames = []


class ObjectJournalStore:
    """Journals in an object store (no appends): ``_journal/<unit>/NNNNNN.seg``, each segment a small
    object written once (about once a second while its unit is in flight), removed at commit."""

    def __init__(self, store: OutputStore) -> None:
        self.store = store

    def _names(self, unit: str | None = None) -> list[str]:
        prefix = f"{JOURNAL_DIR}/{unit}/" if unit else f"{JOURNAL_DIR}/"
        return [n for n in self.store.list_names() if n.startswith(prefix) and n.endswith(SEGMENT_SUFFIX)]

    def open_segment(self, unit: str) -> _ObjectSegment:
        stems = [n.rsplit("/", 1)[1].removesuffix(SEGMENT_SUFFIX) for n in self._names(unit)]
        numbers = [int(stem) for stem in stems if stem.isdigit()]
        return _ObjectSegment(self.store, f"{JOURNAL_DIR}/{unit}", max(numbers, default=0) + 1)

    def segments(self, unit: str) -> Iterator[bytes]:
        for name in sorted(self._names(unit)):
            data = self.store.read_bytes(name)
            if data is not None:
                yield data

    def units(self) -> list[str]:
        return sorted({n.split("/")[1] for n in self._names()})

    def remove(self, unit: str) -> None:
        for name in self._names(unit):
            self.store.delete(name)

    def clear(self) -> None:
        """Delete every journal object."""
        for name in self._names():
            self.store.delete(name)


def journal_store(store: OutputStore) -> JournalStore:
    """The journal beside an output: segment files on a local disk, segment objects on an object store."""
    directory = getattr(store, "directory", None)
    if directory is not None:
        return LocalJournalStore(Path(directory) / JOURNAL_DIR)
    return ObjectJournalStore(store)


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


@dataclass
class Recovered:
    """What an earlier run left in a unit's journal (answers copied out of the segments' bytes)."""

    keys: list[bytes]  # key of each answer, in journal order
    columns: dict[str, np.ndarray]  # answer columns: "vector" (n, dim) float32, or "score" (n,)
    sent: set[bytes] = field(default_factory=set)  # keys sent without a durable answer
    rows: int = 0  # input rows the answers covered when they were written
    _index: dict[bytes, int] | None = None

    def find(self, keys: list[bytes]) -> np.ndarray:
        """Position of each key's answer in ``columns``, -1 where there is none."""
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.keys)}
        index = self._index
        return np.fromiter((index.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))

    def values(self, column: str) -> np.ndarray:
        """An answer column (empty if the journal holds only sent keys)."""
        return self.columns.get(column, np.zeros(0, dtype=np.float32))


def _numpy(col: pa.Array) -> np.ndarray:
    """A journal column as numpy: fixed-size lists become (n, dim)."""
    if pa.types.is_fixed_size_list(col.type):
        dim = col.type.list_size
        flat = col.values.to_numpy(zero_copy_only=False)[col.offset * dim :]
        return flat[: len(col) * dim].reshape(-1, dim)
    return col.to_numpy(zero_copy_only=False)


def read_unit(store: JournalStore, unit: str, fingerprint: str) -> Recovered | None:
    """A unit's journal, or None if it has none, holds nothing usable, or belongs to another fingerprint."""
    keys: list[bytes] = []
    parts: dict[str, list[np.ndarray]] = {}
    sent: set[bytes] = set()
    rows = 0
    for data in store.segments(unit):
        for batch, meta in decode_frames(data):
            if meta.get("version") != FORMAT_VERSION or meta.get("fingerprint") != fingerprint:
                return None
            if meta.get("kind") == "answers":
                keys.extend(batch.column("key").to_pylist())
                for name in batch.schema.names:
                    if name != "key":
                        parts.setdefault(name, []).append(_numpy(batch.column(name)))
                rows += int(meta.get("rows", 0))
            elif meta.get("kind") == "sent":
                sent.update(batch.column("key").to_pylist())
    if not keys and not sent:
        return None
    try:
        columns = {name: np.concatenate(arrays) for name, arrays in parts.items()}  # copies: segments freed
    except ValueError:  # answers of different shapes: not one job's
        return None
    if any(len(c) != len(keys) for c in columns.values()):
        return None
    sent.difference_update(keys)
    return Recovered(keys, columns, sent, rows)


def answered_rows(store: JournalStore, unit: str, fingerprint: str) -> int:
    """Input rows answered in ``unit``'s journal but not yet in a shard (0 if unusable); for ``status``."""
    rec = read_unit(store, unit, fingerprint)
    return rec.rows if rec is not None else 0


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

    def __init__(self, store: JournalStore, fingerprint: str, task: Task, stats: Stats, committed: set[str]) -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.task = task
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

    def prepare(self, chunk: Chunk) -> tuple[Piece, list[Request]]:
        """``task.prepare`` minus the answers the unit's journal already holds (reader thread)."""
        piece, requests = self.task.prepare(chunk)
        unit = unit_key(chunk.unit.name)
        if unit not in self._recovered:
            rec = read_unit(self.store, unit, self.fingerprint)
            if rec is None and unit in self.store.units():
                self.store.remove(unit)  # another job's, or nothing readable: start it afresh
            self._recovered[unit] = rec
        rec = self._recovered[unit]
        if chunk.last:
            self._recovered[unit] = None  # the unit is fully read: free the answers (key stays: loaded)
        if rec is not None:
            requests, recovered, resent = self.task.recover(piece, requests, rec)
            self.stats.rows_recovered += recovered
            self.stats.rows_resent += resent
        self.borrowed(piece)  # memo hits: kept now, the memo dies with the process
        return piece, requests

    # --------------------------------------------------------------------------------- writing

    def sent(self, request: Request) -> None:
        """Note the keys of a request about to be sent (so a later run can count what it re-sends).

        Written here and now (a few KB), not queued: the requests in flight at a kill are exactly the
        ones whose note must not be lost."""
        batch = pa.record_batch({"key": self.task.journal_keys(request)})
        meta = {"version": FORMAT_VERSION, "fingerprint": self.fingerprint, "kind": "sent", "rows": 0}
        self._append(unit_key(request.piece.chunk.unit.name), batch, meta)

    def answered(self, request: Request) -> None:
        """Keep the answers of a request the moment they are accepted."""
        batch, rows = self.task.journal_answers(request.piece, request.items)
        self._submit(request.piece.chunk.unit.name, batch, "answers", rows)

    def borrowed(self, piece: Piece) -> None:
        """Keep the answers a piece got from elsewhere (dedup memo, another piece's request)."""
        found = self.task.journal_borrowed(piece)
        if found is not None:
            self._submit(piece.chunk.unit.name, found[0], "answers", found[1])

    def _submit(self, shard: str, batch: pa.RecordBatch, kind: str, rows: int) -> None:
        if not batch.num_rows:
            return
        meta = {"version": FORMAT_VERSION, "fingerprint": self.fingerprint, "kind": kind, "rows": rows}
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
