"""What a job computes, behind one interface the scheduler (``runner``) drives.

A task turns a chunk of input rows into a *piece* (its work items plus the output rows they feed)
and a list of *requests* (runs of work items that travel together); it sends a request, stores an
answer, and finally turns a finished piece into output rows, failed rows and cut rows. Everything
else (limits, retries, splitting, ordering, shards, manifest, resume) is shared: the sender sends,
the output commits. What the answer journal needs of a task is a separate object, its
:class:`JournalCodec`; the job's vectors (their width, check and written lengths) are ``vectors``.

    embed:   item = a unique text of the chunk;         answer = its vector
    rerank:  item = one (query, document) pair;         answer = its relevance score
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa

from batchembed.input.units import Chunk
from batchembed.output.journal.writer import JournalCodec
from batchembed.tasks.vectors import Vectors


@dataclass
class Piece:
    """A chunk on its way through the pipeline."""

    chunk: Chunk
    rows: int  # input rows in the chunk
    skipped: int  # rows kept with an empty result (blank text, too long with on_too_long=skip)
    work: Any  # the task's own state (texts and vectors, pairs and scores)
    errors: dict[int, str] = field(default_factory=dict)  # item index -> why it failed
    pending: int = 0  # requests outstanding
    requests: int = 0  # requests it had to send at the start (progress credits its rows as they end)
    abandoned: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Request:
    """Work items of one piece sent together; ``tokens`` is what the tokens/min limiter is charged."""

    piece: Piece
    items: np.ndarray
    tokens: int
    #: Tokens paid for this request's answer (the server's count, else ours; 0 when nothing was sent):
    #: set by the sender once the answer is accepted, before the journal keeps it with the answer.
    spent: int = 0
    #: Where the journal wrote this request's answer as it was decoded (``journal.kept.Kept``), if it did.
    kept: Any = None


class PieceTables(NamedTuple):
    """What a finished piece writes: its output rows, its failed rows (id, file, row, error) and the
    rows whose text was cut to fit (None when there are none)."""

    rows: pa.Table
    failed: pa.Table | None
    cut: pa.Table | None


class Task(Protocol):
    """The job-specific half of the pipeline."""

    #: columns to read from the input files
    columns: list[str]
    #: a column whose runs of equal values must stay in one chunk and one shard (rerank queries)
    group_key: str | None
    #: the job's vectors (width, check, written lengths); None for a task that makes none (rerank)
    vectors: Vectors | None
    #: the type every shard holds each copied column as (``output.schema``), settled by the run before buying
    output_types: dict[str, Any]

    def prepare(self, chunk: Chunk) -> tuple[Piece, list[Request]]:
        """Build a piece and its requests from a chunk (runs in a worker thread: no asyncio here)."""
        ...

    async def call(self, request: Request, meter: Any) -> Any:
        """Send one request to the provider, inside ``async with meter(tokens)`` (``sender.Meter``: what
        goes out is paced and charged); raise ``APIError`` subclasses on failure."""
        ...

    def accept(self, request: Request, answer: Any) -> int | None:
        """Store an answer in its piece; return the tokens the server reported (None if it did not).

        Raises ``MalformedResponse`` when the answer does not fit the request."""
        ...

    def shorten(self, request: Request) -> bool:
        """The server says this request's one item is too long although it fits our count: cut it further
        if the task can (the request is sent again), else False (it is dead-lettered)."""
        ...

    def reuse_output(self, store: Any, shards: list) -> None:
        """Take answers the output already holds (a refresh's kept and retiring ``shards``) instead of
        buying them again; a task that cannot leaves it."""
        ...

    def tables(self, piece: Piece) -> PieceTables:
        """Output rows of a finished piece, its failed rows and its cut rows."""
        ...

    def metadata(self) -> dict[str, Any]:
        """What each shard's Parquet metadata records about the model."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """Task settings that change the output (merged into the job fingerprint)."""
        ...

    def journal_codec(self) -> JournalCodec:
        """The task's answers as the answer journal stores them."""
        ...

    def close(self) -> None:
        """Release what the task holds (the embed task's cache file)."""
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
