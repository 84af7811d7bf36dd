"""The embed task's answers in the answer journal: (text key, vector) pairs, and back.

A text's key is its memo key, so an answer is found again wherever the text recurs, in this unit or
(through the memo) in any later one. What the journal keeps of a unit is every answer its pieces
hold or wait for: the memo's hits as soon as a piece is prepared (the memo dies with the process),
the answers its requests bring (shared ones included) as they are accepted, and the answers other
units' requests bring for texts it still waits for (the dedup layer's ``expect``), at once. A
request that sent all its texts itself (the usual case) is kept by ``keep`` on the thread that decoded
its answer, and its piece then holds only where that frame lies (``PieceVectors``). Since ``resume``
sees which texts another piece already sends, it is also where a piece's requests are packed for
good: its own texts first, the shared ones apart.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from batchembed.output.journal.frames import CUT_FIELD, cut_array
from batchembed.output.journal.writer import Journal, Resumed
from batchembed.output.shard_writer import vector_array
from batchembed.tasks import Piece, Request
from batchembed.tasks.dedup import SharedEmbedder
from batchembed.tasks.embed_work import EmbedWork
from batchembed.tasks.memo import key_array
from batchembed.tasks.vectors import Vectors

#: The reason ``prepare`` gives its own cuts: made again the same way on resume, so never journaled.
LIMIT_CUT = "limits.input_tokens"


class EmbedTaskSide(Protocol):
    """What the codec asks of the embed task (``tasks.embed.EmbedTask``)."""

    shared: SharedEmbedder
    vectors: Vectors

    def note_server_cuts(self, work: EmbedWork, items) -> None: ...

    def pack(self, piece: Piece, items: np.ndarray) -> list[Request]: ...


class EmbedJournalCodec:
    """Keys, answers and recovery for one embed task's pieces."""

    def __init__(self, task: EmbedTaskSide) -> None:
        self.task = task
        self.journal: Journal | None = None  # the run's journal, once it binds this codec

    def bind(self, journal: Journal) -> None:
        """The run's journal: ``keep`` writes answers into it as they are decoded."""
        self.journal = journal

    def keys(self, request: Request) -> pa.Array:
        """The memo key of each text of ``request``."""
        return key_array(request.piece.work.keys[request.items])

    def keep(self, request: Request, vectors: np.ndarray, tokens: int) -> None:
        """Journal a request's checked answer now, where it was decoded, so that its piece holds only
        where it lies (``request.kept``); ``tokens``: what it paid."""
        journal = self.journal
        if journal is None:
            return
        piece, items = request.piece, request.items
        batch, rows = self._batch(piece, items, vectors)
        request.kept = journal.keep(piece.chunk.unit.name, batch, rows, tokens)

    def answers(self, request: Request) -> list[tuple[str, pa.RecordBatch, int]]:
        """The request's keys and vectors for its own unit (with the rows using them) unless ``keep`` wrote
        them already, and the same answers for every other unit waiting for some of these texts (counted
        there when its own request comes)."""
        piece = request.piece
        unit = piece.chunk.unit.name
        others = self.task.shared.expecting(piece.work.keys[request.items], unit)
        if request.kept is not None and not others:
            return []  # the usual case: kept already, nobody else waits
        batch, rows = self._batch(piece, request.items)
        frames = [] if request.kept is not None else [(unit, batch, rows)]
        for other, at in others.items():
            frames.append((other, batch.take(pa.array(at, pa.int64())), 0))
        return frames

    def _batch(self, piece: Piece, items: np.ndarray, vectors: np.ndarray | None = None) -> tuple[pa.RecordBatch, int]:
        """Keys and vectors of ``items`` (``vectors``, else the piece's), and the rows of the piece that use them."""
        work: EmbedWork = piece.work
        work.mark_journaled(items)
        if vectors is None:
            vectors = work.vectors.take(items)
        batch = pa.record_batch({"key": key_array(work.keys[items]), "vector": vector_array(vectors)})
        if work.truncated:  # cut after the server's "too long" (here or where the answer came from): a
            # resume must list these rows as cut too (a cut to limits.input_tokens is made again by prepare)
            cuts = [work.truncated.get(int(i)) for i in items]
            cuts = [c if c is not None and c[0] != LIMIT_CUT else None for c in cuts]
            if any(c is not None for c in cuts):
                batch = batch.append_column(CUT_FIELD, cut_array(cuts))
        return batch, int(work.row_counts()[items].sum())

    def resume(self, piece: Piece, requests: list[Request], recovered: Any) -> Resumed:
        """A prepared piece in a run: answers from the killed run's journal (``recovered``, or None) go into
        the piece and the memo; the texts still without an answer are noted as awaited by the unit and
        packed again: first the ones nobody else is sending (packed as ``plan`` counts them), then the
        ones another piece sends first (their requests wait for those answers and send nothing). The
        memo's answers go into the journal at once (the memo dies with the process)."""
        task = self.task
        work: EmbedWork = piece.work
        counts = work.row_counts()
        used = counts > 0
        recovered_rows = 0
        if recovered is not None:
            wanted = np.flatnonzero(used)
            at = recovered.find(work.keys[wanted].tolist())
            found, rows = wanted[at >= 0], at[at >= 0]
            if len(found):
                vectors = recovered.take("vector", rows)  # only this piece's answers are read
                task.vectors.learn(vectors.shape[1])
                work.set_vectors(found, vectors)
                work.mark_journaled(found)
                for key in work.keys[found] if recovered.cuts else ():
                    if key in recovered.cuts:  # cut after the server's "too long": still a cut row
                        task.shared.cuts[key] = recovered.cuts[key]
                task.note_server_cuts(work, found)
                task.shared.remember(work.keys[found], vectors)
                in_requests = np.concatenate([r.items for r in requests]) if requests else found[:0]
                recovered_rows = int(counts[np.intersect1d(found, in_requests)].sum())
        waiting = np.flatnonzero(used & ~work.answered)
        elsewhere = task.shared.expect(piece.chunk.unit.name, work.keys[waiting])
        late = [(i, vec) for i in waiting if (vec := task.shared.recall(work.keys[i])) is not None]
        if late:  # answered between the memo lookup and ``expect``
            work.set_vectors([i for i, _ in late], np.stack([vec for _, vec in late]))
            task.note_server_cuts(work, [i for i, _ in late])
            keep = ~work.answered[waiting]
            waiting, elsewhere = waiting[keep], elsewhere[keep]
        resent = 0
        if recovered is not None and recovered.sent:
            resent = int(sum(counts[i] for i in waiting if work.keys[i] in recovered.sent))
        left = task.pack(piece, waiting[~elsewhere]) + task.pack(piece, waiting[elsewhere])
        return Resumed(left, recovered_rows, resent, self._held(piece))

    def _held(self, piece: Piece) -> tuple[pa.RecordBatch, int] | None:
        """The piece's answers not yet in the journal (memo hits), or None."""
        work: EmbedWork = piece.work
        wanted = work.answered & (work.row_counts() > 0)
        if work.journaled is not None:
            wanted &= ~work.journaled
        items = np.flatnonzero(wanted)
        return self._batch(piece, items) if len(items) else None
