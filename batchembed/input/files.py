"""An input file as a run knows it (``SourceFile``): where it is, its format and compression, its
identity (size, mtime, ETag, or a digest), the part of it the output already holds when it only grew
(``tail``), and how its bytes are opened (random access for Parquet, a decompressing
stream for CSV and JSON Lines; from memory when the run's file cache holds it).

Small input files are read once per run (``FileCache``): a run opens an input file several times
before a row is sent: discovery (a Parquet footer: its row count), the column checks (schema, a CSV's
header), the id check (the id column), then the reading. For a big file those opens are a small part
of the work; for thousands of small files (on an object store each open is a round trip or three)
they are most of it. A run's ``FileCache`` reads a small file whole at its first open and serves
every later open from those bytes, until the reading has gone past the file (``release_before``).
What it holds is bounded (``budget`` bytes): files met once the budget is full are opened as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from batchembed.fs.location import Location
from batchembed.input.compression import decompressed
from batchembed.input.digest import end_facts

#: Files up to this size are read whole at their first open.
SMALL_FILE_BYTES = 16 << 20
#: The most a run keeps of such files at once.
BUDGET_BYTES = 128 << 20


@dataclass(frozen=True)
class SourceFile:
    """One input file. ``name`` is its path relative to the input root: stable across machines."""

    index: int
    path: Path | str  # a local path, or the file's URI ("s3://bucket/key") in an object store
    name: str
    format: str
    size: int
    mtime_ns: int
    rows: int | None  # known up front for Parquet, None for CSV and JSON Lines
    location: Location | None = field(default=None, compare=False)  # set for object-store files
    cache: FileCache | None = field(default=None, compare=False, repr=False)  # a run's small files, read once
    etag: str | None = None  # an object's ETag (buckets): its identity with the size
    compression: str | None = None  # "gzip", "zstd", "bz2" or "xz": decompressed while read (CSV, JSON Lines)
    digest: str | None = None  # input.identity = "content": xxh3-128 of the file's bytes (local files)
    stat_key: tuple | None = field(default=None, compare=False)  # the stat the digest belongs to (``digest``)
    #: (rows, bytes): the output holds the file's first ``rows`` records, which end at byte ``bytes``; the
    #: file grew after them (a CSV or JSON Lines file read from there on, not from its first byte)
    tail: tuple[int, int] | None = None

    def open(self):
        """What pyarrow readers take: the local path, or a random-access file read by ranged GETs (from
        memory when the run's ``cache`` holds the file)."""
        if self.cache is not None:
            return self.cache.open(self, self._read_whole, self._open)
        return self._open()

    def _open(self):
        if self.location is None:
            return self.path
        return self.location.fs.open_input_file(self.location.fs_path)

    def _read_whole(self) -> pa.Buffer:
        """The file's bytes, in one read."""
        if self.location is None:
            with pa.OSFile(str(self.path), "r") as fh:
                return fh.read_buffer()
        with self.location.fs.open_input_file(self.location.fs_path) as fh:
            return fh.read_buffer()

    def open_stream(self):
        """A sequential binary stream of the file's (decompressed) bytes: the local path when it is not
        compressed, else a stream; a remote file streams, never downloaded whole (from memory when the
        run's ``cache`` holds the file)."""
        if self.cache is not None:
            return decompressed(self.cache.open(self, self._read_whole, self._raw_stream), self.compression)
        return decompressed(self._raw_stream(), self.compression)

    def head(self, n: int = 8) -> bytes:
        """The file's first ``n`` bytes as stored (what a compressed file really holds); b"" if unreadable."""
        try:
            raw = self._raw_stream()
            if isinstance(raw, str):
                with open(raw, "rb") as fh:
                    return fh.read(n)
            with raw:
                return raw.read(n)
        except OSError:
            return b""

    def reading_from(self, start_row: int) -> tuple[int, int]:
        """(row, byte) where a reader that wants rows from ``start_row`` on starts: after the records the
        output already holds (``tail``) when it wants none of them, else (0, 0), the file's start."""
        if self.tail is not None and self.compression is None and start_row >= self.tail[0]:
            return self.tail
        return 0, 0

    def open_from(self, offset: int):
        """The file's stored bytes from byte ``offset`` on, as a stream (an uncompressed file that grew: its
        new records are read without reading what comes before them)."""
        if self.location is None:
            fh = pa.OSFile(str(self.path), "r")
        else:
            fh = self.location.fs.open_input_file(self.location.fs_path)
        fh.seek(offset)
        return fh

    def _raw_stream(self):
        """The file's bytes as stored: the local path, or a streaming remote reader."""
        if self.location is None:
            return str(self.path)
        return self.location.fs.open_input_stream(self.location.fs_path, compression=None)


class FileCache:
    """The bytes of a run's small input files, from their first open until the reading is past them."""

    def __init__(self, budget: int = BUDGET_BYTES, small: int = SMALL_FILE_BYTES) -> None:
        self.budget = budget
        self.small = small
        self.held = 0
        self._data: dict[int, pa.Buffer] = {}  # source index -> the file's bytes
        self._sources: dict[int, SourceFile] = {}
        self._floor = 0  # files before this one are read for good
        self._lock = threading.Lock()  # the run's reader and its row count (``run.rowcount``) share it
        #: What a commit records of a CSV/JSON Lines file read to its end (``digest.end_facts``), taken from
        #: its bytes as they are dropped, so recording it opens the file no second time.
        self.facts: dict[str, tuple] = {}

    def open(self, source: SourceFile, read_whole: Callable[[], pa.Buffer], open_file: Callable[[], Any]) -> Any:
        """A reader of ``source``: from memory if it is held (or small and the budget has room: read
        whole now, once), else ``open_file()``."""
        with self._lock:
            data = self._data.get(source.index)
            if data is None and self._admits(source):
                data = read_whole()
                self._data[source.index] = data
                self._sources[source.index] = source
                self.held += data.size
        return pa.BufferReader(data) if data is not None else open_file()

    def holds_if_opened(self, source: SourceFile) -> bool:
        """Whether opening ``source`` now would read it whole into memory (or it is held already)."""
        with self._lock:
            return source.index in self._data or self._admits(source)

    def _admits(self, source: SourceFile) -> bool:
        return source.index >= self._floor and source.size <= self.small and self.held + source.size <= self.budget

    def release_before(self, index: int) -> None:
        """The reading is at file ``index``: the files before it are read for good (never held again)."""
        with self._lock:
            if index <= self._floor:
                return
            for i in [i for i in self._data if i < index]:
                self._drop(i)
            self._floor = index

    def facts_of(self, source: SourceFile) -> tuple | None:
        """What a commit records of a CSV/JSON Lines file read to its end, from its bytes: held now, or taken
        as they were dropped (None when the cache never held it whole: the caller reads the file)."""
        with self._lock:
            data = self._data.get(source.index)
            if source.name not in self.facts and data is not None:
                self._take_facts(source, data)
            return self.facts.get(source.name)

    def _take_facts(self, source: SourceFile, data: pa.Buffer) -> None:
        if source.format in ("csv", "jsonl") and data.size == source.size and source.name not in self.facts:
            self.facts[source.name] = end_facts(source, data.size, hashed=source.location is None, data=data)

    def _drop(self, index: int) -> None:
        data, source = self._data.pop(index), self._sources.pop(index)
        self.held -= data.size
        self._take_facts(source, data)

    def clear(self) -> None:
        """Drop everything held (the run's reading is over)."""
        with self._lock:
            for i in list(self._data):
                self._drop(i)


def released_as_read(chunks: Iterable[Any], cache: FileCache | None) -> Iterator[Any]:
    """``chunks`` (in file order) as they come, releasing each file's bytes once the reading is past it."""
    for chunk in chunks:
        if cache is not None:
            cache.release_before(min(src.index for src, _, _ in chunk.segments()))
        yield chunk
    if cache is not None:
        cache.clear()
