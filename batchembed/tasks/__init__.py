"""What a job computes, behind one interface the scheduler (``runner``) drives.

A task turns a chunk of input rows into a *piece* (its work items plus the output rows they feed)
and a list of *requests* (contiguous runs of work items that travel together); it sends a request,
stores an answer, and finally turns a finished piece into output rows and failed rows. Everything
else (limits, retries, splitting, ordering, shards, manifest, resume) is shared.

    embed:   item = a unique text of the chunk;         answer = its vector
    rerank:  item = one (query, document) pair;         answer = its relevance score
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from batchembed.units import Chunk


@dataclass
class Piece:
    """A chunk on its way through the pipeline."""

    chunk: Chunk
    rows: int  # input rows in the chunk
    skipped: int  # rows kept with an empty result (blank text, too long with on_too_long=skip)
    work: Any  # the task's own state (texts and vectors, pairs and scores)
    errors: dict[int, str] = field(default_factory=dict)  # item index -> why it failed
    pending: int = 0  # requests and waits outstanding
    waits: int = 0  # answers this piece waits for from other pieces' requests
    abandoned: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Request:
    """Work items of one piece sent together; ``tokens`` is what the tokens/min limiter is charged."""

    piece: Piece
    items: np.ndarray
    tokens: int


class Task(Protocol):
    """The job-specific half of the pipeline."""

    #: columns to read from the input files
    columns: list[str]
    #: a column whose runs of equal values must stay in one chunk and one shard (rerank queries)
    group_key: str | None

    def prepare(self, chunk: Chunk) -> tuple[Piece, list[Request]]:
        """Build a piece and its requests from a chunk (runs in a worker thread: no asyncio here)."""
        ...

    async def call(self, request: Request) -> Any:
        """Send one request to the provider; raise ``APIError`` subclasses on failure."""
        ...

    def claim(self, piece: Piece, requests: list[Request]) -> list[Request]:
        """On the event loop, just before sending: drop work another piece already has in flight.

        Returns the requests still to send; the piece's ``waits`` counts what it now waits for."""
        ...

    def release(self, request: Request) -> list[Piece]:
        """After a request is settled (answered, failed or abandoned): hand its answers to pieces
        that waited for them; return one entry per wait that is now over."""
        ...

    def accept(self, request: Request, answer: Any) -> int | None:
        """Store an answer in its piece; return the tokens the server reported (None if it did not).

        Raises ``MalformedResponse`` when the answer does not fit the request."""
        ...

    def failed_rows(self, piece: Piece) -> int:
        """Input rows of a finished piece that failed."""
        ...

    async def ready(self) -> None:
        """Called before the first shard is opened (the embed task learns the vector size here)."""
        ...

    def tables(self, piece: Piece) -> tuple[pa.Table, pa.Table | None]:
        """Output rows of a finished piece, and its failed rows (id, file, row, error) if any."""
        ...

    def metadata(self) -> dict[str, Any]:
        """What each shard's Parquet metadata records about the model."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """Task settings that change the output (merged into the job fingerprint)."""
        ...

    def close(self) -> None:
        """Release what the task holds (the embed task's cache file)."""
        ...

    # The answer journal (``batchembed.journal``): keys identify an answer across runs.

    def journal_keys(self, request: Request) -> pa.Array:
        """16-byte key of each item of ``request`` (``fixed_size_binary(16)``)."""
        ...

    def journal_answers(self, piece: Piece, items: np.ndarray) -> tuple[pa.RecordBatch, int]:
        """Answers of ``items`` as a batch (``key`` + answer column) and the input rows they cover."""
        ...

    def journal_borrowed(self, piece: Piece) -> tuple[pa.RecordBatch, int] | None:
        """Answers the piece holds without its own request (dedup) and not yet journaled."""
        ...

    def recover(self, piece: Piece, requests: list[Request], recovered: Any) -> tuple[list[Request], int, int]:
        """Fill answers found in ``recovered`` (a ``journal.Recovered``) and drop them from ``requests``.

        Returns the requests left, the input rows recovered, and the rows about to be sent again
        although an earlier run had sent them (its answer never became durable)."""
        ...


def failure_table(ids: pa.Array, file: str | pa.Array, rows: np.ndarray, errors: list[str]) -> pa.Table:
    """The rows of ``_failed.parquet``: id, input file (one name, or one per row), input row, error."""
    return pa.table(
        {
            "id": ids,
            "file": pa.array([file] * len(rows), pa.string()) if isinstance(file, str) else file,
            "row": pa.array(rows, pa.int64()),
            "error": pa.array(errors, pa.string()),
        }
    )
