"""Where answer journals live: segment files on a local disk, segment objects on an object store.

The local store appends frames to one segment file per unit and run
(``_journal/part-00007/000001.seg``): each frame is written with one ``write`` as it arrives (it
survives ``kill -9`` at once: the page cache outlives the process) and fsynced in groups, about once
a second, against power loss. An object store, which has no appends, implements the same interface by
buffering frames and putting each group as one small object written once (``sync``), removed at commit.
What goes into the frames is :mod:`batchembed.output.journal`'s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import pyarrow as pa

from batchembed.fs.atomic import fsync_dir
from batchembed.output.journal.fenced import FencedJournalStore
from batchembed.output.layout import JOURNAL_DIR
from batchembed.output.store.fencing import TokenFence

if TYPE_CHECKING:
    from batchembed.output.store.base import OutputStore


SEGMENT_SUFFIX = ".seg"


class FrameAt(NamedTuple):
    """Where a frame's payload (its Arrow IPC stream) lies in a local segment file."""

    path: str
    offset: int
    length: int


class SegmentWriter(Protocol):
    """One segment of one unit's journal, being written by this run."""

    def append(self, frame: list) -> FrameAt | None:
        """Add a frame (its parts: header and payload buffers). Locally it is in the file when this returns,
        and where its payload lies is returned (to read it back in place); None where frames are only
        buffered (an object store: the caller keeps what it needs)."""
        ...

    def sync(self) -> None:
        """Make the frames appended so far durable (fsync; on an object store: put them as one object)."""
        ...

    def close(self, sync: bool = True) -> None:
        """Release the segment, after a sync unless ``sync`` is False (the journal is being deleted)."""
        ...

    def discard(self) -> None:
        """Delete what this segment wrote (a writer that lost its fence: ``fenced``); still to be closed."""
        ...


class SegmentReader(Protocol):
    """An existing segment, read once from the start (to index it) and then by ranges (to take answers).

    Reads return Arrow buffers (Arrow's allocator, not the C heap: a resume reading frame after frame of
    about a megabyte leaves no heap fragments behind, so its memory stays that of a first run)."""

    size: int

    def stream(self) -> Any:
        """A file object reading the segment sequentially from the start (``read_buffer(n)``; closed by
        the caller)."""
        ...

    def read_at(self, offset: int, length: int) -> pa.Buffer:
        """``length`` bytes from ``offset`` (a frame found by the sequential read)."""
        ...

    def close(self) -> None:
        """Release the segment."""
        ...


class JournalStore(Protocol):
    """Where journal segments live: a directory, or (issue #13) a prefix of an object store."""

    def open_segment(self, unit: str) -> SegmentWriter:
        """A new segment of ``unit``'s journal, after (and never overwriting) the existing ones."""
        ...

    def segments(self, unit: str) -> Iterator[bytes]:
        """The bytes of each existing segment of ``unit``, oldest first."""
        ...

    def readers(self, unit: str) -> list[SegmentReader]:
        """A reader of each existing segment of ``unit``, oldest first: a resume indexes the answers
        and takes them a frame at a time, never holding a unit's answers whole."""
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

    def prune(self) -> None:
        """Remove what holds no journal any more (an empty ``_journal/`` directory), leaving the rest."""
        ...


class _LocalSegment:
    """An append-only segment file: one ``write`` per frame, fsync on ``sync``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._dirty = False
        self._closing = threading.Lock()
        self.size = 0  # bytes appended (the file is new and only this writer appends to it)
        fsync_dir(path.parent)

    def append(self, frame: list) -> FrameAt:
        total = sum(memoryview(part).nbytes for part in frame)
        written = os.writev(self._fd, frame)
        if written < total:  # a short write (rare): write the rest byte-exactly
            rest = memoryview(b"".join(bytes(memoryview(p)) for p in frame))[written:]
            while rest:
                rest = rest[os.write(self._fd, rest) :]
        self._dirty = True
        header = memoryview(frame[0]).nbytes
        at = FrameAt(str(self.path), self.size + header, total - header)
        self.size += total
        return at

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

    def discard(self) -> None:
        """Unlink the file (the descriptor stays open until ``close``: a frame appended meanwhile goes nowhere
        visible), and its unit's directory if nothing else is in it."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError):  # another run's segment keeps it
            self.path.parent.rmdir()


class _LocalReader:
    """A segment file: sequential reads, then single frames by offset (Arrow buffers, see ``SegmentReader``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = pa.OSFile(str(path), "r")
        self.size = self._file.size()

    def stream(self) -> pa.NativeFile:
        return pa.OSFile(str(self.path), "r")

    def read_at(self, offset: int, length: int) -> pa.Buffer:
        self._file.seek(offset)
        return self._file.read_buffer(length)

    def close(self) -> None:
        self._file.close()


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

    def readers(self, unit: str) -> list[_LocalReader]:
        readers = []
        for path in sorted(self._dir(unit).glob("*" + SEGMENT_SUFFIX)):
            try:
                readers.append(_LocalReader(path))
            except FileNotFoundError:
                continue
        return readers

    def units(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def remove(self, unit: str) -> None:
        shutil.rmtree(self._dir(unit), ignore_errors=True)

    def clear(self) -> None:
        """Delete the whole journal directory."""
        shutil.rmtree(self.root, ignore_errors=True)

    def prune(self) -> None:
        """Remove ``_journal/`` if no unit has a journal in it (``rmdir``: a unit another ``--shard`` part
        is journaling keeps it, and a part that starts one afterwards creates it again)."""
        with contextlib.suppress(OSError):
            self.root.rmdir()


class _ObjectSegment:
    """Frames buffered in memory; each ``sync`` puts what was added since as one object written once."""

    def __init__(self, store: OutputStore, prefix: str, first: int) -> None:
        self.store = store
        self.prefix = prefix
        self.number = first
        self._frames: list[bytes] = []
        self._lock = threading.Lock()
        self.written: list[str] = []  # the objects this segment put

    def append(self, frame: list) -> None:
        data = b"".join(bytes(memoryview(part)) for part in frame)
        with self._lock:
            self._frames.append(data)
        return None  # buffered until ``sync``: nothing to read back in place

    def sync(self) -> None:
        with self._lock:
            frames, self._frames = self._frames, []
            number, self.number = self.number, self.number + 1
        if frames:
            name = f"{self.prefix}/{number:06d}{SEGMENT_SUFFIX}"
            self.store.write_bytes(name, b"".join(frames))
            self.written.append(name)

    def close(self, sync: bool = True) -> None:
        if sync:
            self.sync()
        with self._lock:
            self._frames = []

    def discard(self) -> None:
        """Delete the objects this segment put and drop the frames not put yet."""
        with self._lock:
            self._frames, written, self.written = [], self.written, []
        for name in written:
            self.store.delete(name)


class _ObjectReader:
    """A segment object: fetched whole for the sequential read (a segment holds about a second of
    answers), then ranged GETs of single frames."""

    def __init__(self, store: OutputStore, name: str, size: int) -> None:
        self.store, self.name, self.size = store, name, size
        self._file: Any = None

    def stream(self) -> pa.NativeFile:
        return pa.BufferReader(self.store.read_bytes(self.name) or b"")

    def read_at(self, offset: int, length: int) -> pa.Buffer:
        if self._file is None:
            self._file = self.store.open_read(self.name)
        self._file.seek(offset)
        return self._file.read_buffer(length)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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

    def readers(self, unit: str) -> list[_ObjectReader]:
        readers = []
        for name in sorted(self._names(unit)):
            size = self.store.size(name)
            if size is not None:
                readers.append(_ObjectReader(self.store, name, size))
        return readers

    def units(self) -> list[str]:
        return sorted({n.split("/")[1] for n in self._names()})

    def remove(self, unit: str) -> None:
        for name in self._names(unit):
            self.store.delete(name)

    def clear(self) -> None:
        """Delete every journal object."""
        for name in self._names():
            self.store.delete(name)

    def prune(self) -> None:
        """Nothing to do: a prefix exists only while objects are under it."""


def journal_store(store: OutputStore) -> JournalStore:
    """The journal beside an output: segment files on a local disk, segment objects on an object store;
    fenced for a writer under another run's lock (a Ray worker: ``fenced``)."""
    directory = getattr(store, "directory", None)
    inner: JournalStore = (
        LocalJournalStore(Path(directory) / JOURNAL_DIR) if directory is not None else ObjectJournalStore(store)
    )
    lock = getattr(store, "lock", None)
    return FencedJournalStore(inner, lock) if isinstance(lock, TokenFence) else inner
