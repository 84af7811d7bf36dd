"""The embed task's state for one chunk (``EmbedWork``): its unique texts, their tokens and keys, and the
answer matrix the requests fill, written once per answer with no per-vector Python object."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa


@dataclass
class EmbedWork:
    """Per-chunk state of the embed task."""

    table: pa.Table  # id + keep columns
    positions: np.ndarray  # file row number of each row
    row_to_text: np.ndarray  # index into ``texts`` per row; -1 for rows never embedded
    texts: list[str]  # unique texts of the chunk
    tokens: np.ndarray  # tokens per unique text
    keys: np.ndarray  # memo key per unique text
    vectors: np.ndarray | None = None  # (len(texts), dim) once the first answer (or memo hit) arrives
    journaled: np.ndarray | None = None  # per unique text: its answer is in the unit's journal
    answered: np.ndarray | None = None  # per unique text: ``vectors`` holds its answer
    _row_counts: np.ndarray | None = None

    def row_counts(self) -> np.ndarray:
        """Input rows sharing each unique text (0 for texts no row sends)."""
        if self._row_counts is None:
            used = self.row_to_text[self.row_to_text >= 0]
            self._row_counts = np.bincount(used, minlength=len(self.texts))
        return self._row_counts

    def allocate(self, dim: int) -> None:
        """The answer matrix, zeroed now: ``prepare`` calls this on the reader thread when the vector
        size is known, so that the event loop does not fault its pages in answer by answer."""
        if self.vectors is None:
            vectors = np.empty((len(self.texts), dim), dtype=np.float32)
            vectors[...] = 0  # touches every page (numpy releases the GIL for it)
            self.vectors = vectors
            self.answered = np.zeros(len(self.texts), dtype=bool)

    def set_vectors(self, items, vectors: np.ndarray) -> None:
        """Store answers (allocating the matrix on the first one)."""
        if self.vectors is None:
            self.allocate(vectors.shape[-1])
        run = _run_of(items)
        if run is not None:  # a run of texts (how requests are packed): a slice copy, no fancy indexing
            items = run
        self.vectors[items] = vectors
        self.answered[items] = True

    def mark_journaled(self, items: np.ndarray) -> None:
        """Remember that these texts' answers are in the journal."""
        if self.journaled is None:
            self.journaled = np.zeros(len(self.texts), dtype=bool)
        self.journaled[items] = True

    # text index -> (why it was cut, its tokens and characters before the cut, characters kept)
    truncated: dict[int, tuple[str, int, int, int]] = field(default_factory=dict)
    server_cuts: dict[int, int] = field(default_factory=dict)  # text index -> cuts after "too long" answers


def _run_of(items) -> slice | None:
    """``items`` as a slice when they are consecutive ascending indices (an int array of at least 2)."""
    if not isinstance(items, np.ndarray) or items.ndim != 1 or len(items) < 2:
        return None
    first, last = int(items[0]), int(items[-1])
    if last - first + 1 != len(items) or not (np.diff(items) == 1).all():
        return None
    return slice(first, last + 1)
