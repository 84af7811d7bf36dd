"""Where a piece's answers are until the piece is written: ``PieceVectors``.

A piece's answers come in blocks (a request's answer, the memo's hits, what a killed run's journal
held), each for some of its texts. A block is either in memory or, for a request's answer, the answers
frame its unit's journal wrote it to (``Kept``): then the piece holds no copy of the vectors at all,
and when it is written they are read back in place (a memory map of the journal segment) and handed to
the Parquet writer as they lie, one chunk per block. So what the run holds in memory is what is in
flight, not what was answered and waits for the writer. Only a piece whose rows are not its texts one
for one and in order (a text used twice, blank rows, failed rows) gathers its vectors into one matrix.

Each text's vector length is kept beside it (measured as the answer was decoded) for the shard's
``vector_norms`` without another pass over the vectors.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa

from batchembed.output.journal.frames import column_numpy
from batchembed.output.journal.kept import Kept, KeptReader
from batchembed.output.shard_writer import vector_array
from batchembed.providers.base import vector_norms


class _Block(NamedTuple):
    items: np.ndarray  # text indices, in the order of the block's rows
    vectors: np.ndarray | None  # (len(items), dim), or None: read from ``kept``
    kept: Kept | None


def _empty(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 matrix in Arrow's allocator rather than the C heap (blocks of a piece's size freed in
    another order than they came would otherwise stay in the process)."""
    buffer = pa.allocate_buffer(int(np.prod(shape)) * 4)
    return np.frombuffer(buffer, dtype=np.float32).reshape(shape)


class PieceVectors:
    """The answers of one piece's ``n`` texts, block by block (see the module)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.answered = np.zeros(n, dtype=bool)  # the text has a vector here
        self.norms = np.zeros(n, dtype=np.float32)  # its length
        self.dim: int | None = None
        self._blocks: list[_Block] = []

    def put(self, items, vectors: np.ndarray, norms: np.ndarray | None = None, kept: Kept | None = None) -> None:
        """Answers for ``items`` (text indices): ``vectors`` kept as they are (the caller never changes
        them), or, with ``kept``, only where the journal wrote them (``vectors`` is then let go)."""
        items = np.asarray(items, dtype=np.int64)
        if len(items) != len(vectors):
            raise ValueError(f"{len(items)} texts for {len(vectors)} vectors")
        if not len(items):
            return
        self.dim = vectors.shape[1]
        self.norms[items] = vector_norms(vectors) if norms is None else norms
        self.answered[items] = True
        keep_at = kept is not None and kept.at is not None
        self._blocks.append(_Block(items, None if keep_at else vectors, kept if keep_at else None))

    def take(self, items: np.ndarray, reader: KeptReader | None = None) -> np.ndarray:
        """A copy of the vectors of ``items`` (answered texts), in that order."""
        items = np.asarray(items, dtype=np.int64)
        out = np.zeros((len(items), self.dim or 0), dtype=np.float32)
        where = np.full(self.n, -1, dtype=np.int64)
        where[items] = np.arange(len(items))
        own = reader is None
        reader = reader or KeptReader()
        try:
            for block in self._blocks:  # later blocks win, as later answers did
                at = where[block.items]
                mine = at >= 0
                if mine.any():
                    out[at[mine]] = self._vectors(block, reader)[mine]
        finally:
            if own:
                reader.close()
        return out

    def column(self, rows: np.ndarray, valid: np.ndarray, dim: int) -> tuple[pa.Array | pa.ChunkedArray, np.ndarray]:
        """The ``dim``-wide vector column of the piece's rows (``rows``: each row's text, ``valid``: rows
        that get one; null elsewhere) and the lengths of the valid rows' vectors.

        When every row is its own text, in order, and the blocks cover the texts once each in order, the
        column is the blocks themselves (no copy; kept ones read in place); otherwise a gather."""
        norms = self.norms[rows[valid]]
        reader = KeptReader()
        try:
            tiles = self._tiles()
            if tiles is not None and len(rows) == self.n and valid.all() and _is_identity(rows):
                chunks = [self._chunk(block, reader) for block in tiles]
                return pa.chunked_array(chunks, pa.list_(pa.float32(), dim)), norms
            matrix = _empty((self.n, dim))
            matrix[~self.answered] = 0  # texts no valid row uses, never answered
            for block in self._blocks:  # later blocks win
                matrix[block.items] = self._vectors(block, reader)
            return vector_array(matrix[np.where(valid, rows, 0)], valid), norms
        finally:
            reader.close()

    def _tiles(self) -> list[_Block] | None:
        """The blocks in text order when they cover every text once, each a run of consecutive texts."""
        if not self._blocks or not self.answered.all():
            return None
        blocks = sorted(self._blocks, key=lambda b: int(b.items[0]))
        at = 0
        for block in blocks:
            items = block.items
            if int(items[0]) != at or int(items[-1]) != at + len(items) - 1 or not (np.diff(items) == 1).all():
                return None
            at += len(items)
        return blocks if at == self.n else None

    @staticmethod
    def _chunk(block: _Block, reader: KeptReader) -> pa.Array:
        """A block as a ``fixed_size_list<float32>`` array: its journal frame's own column, or its matrix."""
        if block.vectors is not None:
            return vector_array(block.vectors)
        return reader.batch(block.kept).column("vector")

    @staticmethod
    def _vectors(block: _Block, reader: KeptReader) -> np.ndarray:
        if block.vectors is not None:
            return block.vectors
        return column_numpy(reader.batch(block.kept).column("vector"))


def _is_identity(rows: np.ndarray) -> bool:
    """True when ``rows`` is 0, 1, ..., n-1."""
    return bool((rows == np.arange(len(rows))).all())
