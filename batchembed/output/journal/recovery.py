"""Reading a unit's journal back: ``Recovered``, an index of the answers an earlier run left (keys and
where each answer lies), read a frame at a time so a resume never holds a unit's whole; and the counts
``status`` shows (rows answered but not yet in a shard, and the tokens paid for them)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from batchembed.output.journal.frames import CUT_FIELD, FORMAT_VERSION, column_numpy, cuts_of, scan_frames
from batchembed.output.journal.segments import JournalStore, SegmentReader


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
            self.cuts.update(cuts_of(keys, batch.column(CUT_FIELD.name)))
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
            values = column_numpy(self._read(int(frames[group[0]])).column(column))
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
