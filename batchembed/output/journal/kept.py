"""An accepted answer as the journal kept it (``Kept``), and reading it back in place (``KeptReader``).

The answers frame a request's answer is written to is also where its piece finds the vectors again when
the piece is written into its shard: a local segment's frame is read through a memory map of the
segment (no copy: the Parquet writer reads the page cache the journal wrote), so a piece waiting for
the writer holds no vectors of its own. Where the journal only buffers frames (an object store) or could
not write (a full disk), ``Kept`` holds the batch itself, as a piece used to.
"""

from __future__ import annotations

from typing import NamedTuple

import pyarrow as pa

from batchembed.output.journal.segments import FrameAt


class Kept(NamedTuple):
    """Where an answers frame lies (``at``, in a local segment), or the batch itself when it lies nowhere
    it could be read back from."""

    at: FrameAt | None
    batch: pa.RecordBatch | None = None


class KeptReader:
    """Reads kept frames back: one read-only memory map per segment file, released with the reader (the
    arrays taken from it keep their pages mapped until they are dropped)."""

    def __init__(self) -> None:
        self._maps: dict[str, tuple[pa.MemoryMappedFile, pa.Buffer]] = {}

    def batch(self, kept: Kept) -> pa.RecordBatch:
        """The answers batch of ``kept`` (key and answer columns), zero-copy from its segment.

        A slice of the map's own buffer, not ``read_at``: pyarrow's ``read_at`` copies into new ``bytes``
        (every vector once more, and fresh pages to fault in for each piece)."""
        if kept.at is None:
            return kept.batch
        path, offset, length = kept.at
        mapped = self._maps.get(path)
        if mapped is None or offset + length > mapped[1].size:  # a segment mapped before this frame was written
            if mapped is not None:
                mapped[0].close()  # the arrays read from it keep their pages, as in ``close``
            source = pa.memory_map(path, "r")
            mapped = self._maps[path] = (source, source.read_buffer())
        return pa.ipc.open_stream(mapped[1].slice(offset, length)).read_next_batch()

    def close(self) -> None:
        """Release the maps (pages still referenced by arrays stay mapped until those are dropped)."""
        maps, self._maps = self._maps, {}
        for source, _ in maps.values():
            source.close()
