"""The embed task's answers in the answer journal: (text key, vector) pairs, and back.

A text's key is its memo key, so an answer is found again wherever the text recurs, in this unit or
(through the memo) in any later one. What the journal keeps of a unit is every answer its pieces
hold or wait for: the memo's hits as soon as a piece is prepared (the memo dies with the process),
the answers its requests bring (shared ones included) as they are accepted, and the answers other
units' requests bring for texts it still waits for (the dedup layer's ``expect``), at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchembed.tasks import Piece, Request
from batchembed.writer import vector_array

if TYPE_CHECKING:
    from batchembed.tasks.embed import EmbedTask, EmbedWork


class EmbedJournalCodec:
    """Keys, answers and recovery for one embed task's pieces."""

    def __init__(self, task: EmbedTask) -> None:
        self.task = task

    def keys(self, request: Request) -> pa.Array:
        """The memo key of each text of ``request``."""
        return pa.array(request.piece.work.keys[request.items].tolist(), pa.binary(16))

    def answers(self, request: Request) -> list[tuple[str, pa.RecordBatch, int]]:
        """The request's keys and vectors for its own unit (with the rows using them), and the same answers
        for every other unit waiting for some of these texts (counted there when its own request comes)."""
        piece = request.piece
        unit = piece.chunk.unit.name
        batch, rows = self._batch(piece, request.items)
        frames = [(unit, batch, rows)]
        for other, at in self.task.shared.expecting(piece.work.keys[request.items]).items():
            if other != unit:
                frames.append((other, batch.take(pa.array(at, pa.int64())), 0))
        return frames

    def _batch(self, piece: Piece, items: np.ndarray) -> tuple[pa.RecordBatch, int]:
        """Keys and vectors of ``items``, and the rows of the piece that use them."""
        work: EmbedWork = piece.work
        work.mark_journaled(items)
        if len(items) and (np.diff(items) == 1).all():  # a run of texts: a view, no copy
            vectors = work.vectors[items[0] : items[-1] + 1]
        else:
            vectors = work.vectors[items]
        batch = pa.record_batch(
            {"key": pa.array(work.keys[items].tolist(), pa.binary(16)), "vector": vector_array(vectors)}
        )
        return batch, int(work.row_counts()[items].sum())

    def held(self, piece: Piece) -> tuple[pa.RecordBatch, int] | None:
        """Texts the memo answered while the piece was prepared, and not yet journaled: journaled too, so
        that a crash before this unit commits does not buy them again. The texts still without an answer
        are noted as awaited by the unit (the memo is asked once more, for answers that came meanwhile)."""
        work: EmbedWork = piece.work
        shared = self.task.shared
        used = work.row_counts() > 0
        waiting = np.flatnonzero(used & ~work.answered if work.answered is not None else used)
        shared.expect(piece.chunk.unit.name, work.keys[waiting])
        late = [(i, vec) for i in waiting if (vec := shared.recall(work.keys[i])) is not None]
        if late:
            work.set_vectors([i for i, _ in late], np.stack([vec for _, vec in late]))
        if work.answered is None or piece.abandoned:
            return None
        wanted = work.answered & used
        if work.journaled is not None:
            wanted &= ~work.journaled
        items = np.flatnonzero(wanted)
        return self._batch(piece, items) if len(items) else None

    def recover(self, piece: Piece, requests: list[Request], recovered: Any) -> tuple[list[Request], int, int]:
        """Vectors of texts the journal holds go straight into the piece (and the memo); the rest is
        packed into requests again."""
        task = self.task
        work: EmbedWork = piece.work
        counts = work.row_counts()
        used = np.flatnonzero(counts > 0)
        at = recovered.find(work.keys[used].tolist())
        found, rows = used[at >= 0], at[at >= 0]
        if len(found):
            vectors = recovered.values("vector")
            if task.dim is None:
                task.dim = vectors.shape[1]
            work.set_vectors(found, vectors[rows])
            work.mark_journaled(found)
            task.shared.remember(work.keys[found], vectors[rows])
        have = np.zeros(len(work.texts), dtype=bool)
        have[found] = True
        rest = [r.items[~have[r.items]] for r in requests]
        items = np.concatenate(rest) if rest else np.zeros(0, np.int64)
        recovered_rows = sum(int(counts[r.items[have[r.items]]].sum()) for r in requests)
        resent = 0
        if recovered.sent:
            resent = int(sum(counts[i] for i in items if work.keys[i] in recovered.sent))
        return task.pack(piece, items), recovered_rows, resent
