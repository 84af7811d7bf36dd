"""The embed task's state for one chunk (``EmbedWork``): its unique texts, their tokens and keys, and where
their answers are (``PieceVectors``: blocks in memory or in the unit's journal, no per-vector Python object)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from batchembed.output.journal.kept import Kept
from batchembed.tasks.piece_vectors import PieceVectors


@dataclass
class EmbedWork:
    """Per-chunk state of the embed task."""

    table: pa.Table  # id + keep columns
    positions: np.ndarray  # file row number of each row
    row_to_text: np.ndarray  # index into ``texts`` per row; -1 for rows never embedded
    texts: list[str]  # unique texts of the chunk
    tokens: np.ndarray  # tokens per unique text
    keys: np.ndarray  # memo key per unique text
    journaled: np.ndarray | None = None  # per unique text: its answer is in the unit's journal
    _row_counts: np.ndarray | None = None
    _vectors: PieceVectors | None = None

    @property
    def vectors(self) -> PieceVectors:
        """Where the texts' answers are (made on first use)."""
        if self._vectors is None:
            self._vectors = PieceVectors(len(self.texts))
        return self._vectors

    @property
    def answered(self) -> np.ndarray:
        """Per unique text: an answer is held."""
        return self.vectors.answered

    def row_counts(self) -> np.ndarray:
        """Input rows sharing each unique text (0 for texts no row sends)."""
        if self._row_counts is None:
            used = self.row_to_text[self.row_to_text >= 0]
            self._row_counts = np.bincount(used, minlength=len(self.texts))
        return self._row_counts

    def set_vectors(
        self, items, vectors: np.ndarray, norms: np.ndarray | None = None, kept: Kept | None = None
    ) -> None:
        """Store answers for ``items`` (``vectors`` are kept as they are: the caller never changes them;
        with ``kept``, only the journal frame they were written to is)."""
        self.vectors.put(items, vectors, norms, kept)

    def mark_journaled(self, items: np.ndarray) -> None:
        """Remember that these texts' answers are in the journal."""
        if self.journaled is None:
            self.journaled = np.zeros(len(self.texts), dtype=bool)
        self.journaled[items] = True

    # text index -> (why it was cut, its tokens and characters before the cut, characters kept)
    truncated: dict[int, tuple[str, int, int, int]] = field(default_factory=dict)
    server_cuts: dict[int, int] = field(default_factory=dict)  # text index -> cuts after "too long" answers
