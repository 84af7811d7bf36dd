"""The durable batch ledger: what was planned, uploaded, created and collected, under ``_batch/`` in the output.

Every remote call is preceded by a saved intent and followed by a saved result, each one
whole-or-nothing object written through the output's store (a local directory or a bucket)::

    _batch/job.json                   the job's tag (sent as batch metadata) and fingerprint
    _batch/p00000/a0.items.parquet    attempt 0 of piece 0: line, index, key, text, query, tokens
    _batch/p00000/state.json          the piece's attempts: step, file id, batch id, counts
    _batch/p00000/a0.results.parquet  what came back per item: status, error, vector (or score)

An attempt's ``step`` moves planned -> uploading -> uploaded -> creating -> running -> collected.
A run killed anywhere finds the step it reached: ``uploading`` uploads again (a stray file costs
nothing), ``creating`` first looks for the batch on the provider's list (by its metadata tag)
before creating one, ``running`` polls the batch it recorded. The ledger is kept apart from the
manifest: the manifest says which units are committed, the ledger what was bought.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from batchembed.output.layout import BATCH_DIR
from batchembed.output.store.base import OutputStore

PLANNED, UPLOADING, UPLOADED, CREATING, RUNNING, COLLECTED = (
    "planned",
    "uploading",
    "uploaded",
    "creating",
    "running",
    "collected",
)
#: Item statuses in a results file.
OK, FAILED, RETRY, ONLINE = "ok", "failed", "retry", "online"
#: Rows per row group of a results file: written and read back (``answers.BatchResults``) a group at a time.
RESULT_ROWS = 2048


@dataclass
class Attempt:
    """One submission of (some of) a piece's items: one uploaded file, one batch at a time."""

    n: int
    items: int
    lines: int
    tokens: int
    step: str = PLANNED
    file_id: str | None = None
    upload_at: float | None = None
    tries: int = 0  # batch creations refused for a quota (each one a new metadata tag)
    create_at: float | None = None
    batch_id: str | None = None
    refused: list[str] = field(default_factory=list)  # batches that failed over a quota (never billed)
    status: str = ""  # the provider's last word
    done_lines: int = 0
    billed_items: int = 0
    billed_tokens: int = 0
    ok: int = 0
    failed: int = 0
    retry: int = 0

    @property
    def enqueued(self) -> bool:
        """Whether the provider holds this attempt's lines now (for the queue limit)."""
        return self.step in (CREATING, RUNNING)


@dataclass
class Piece:
    """A slice of the job's distinct items sent as one batch (and re-sent in smaller attempts)."""

    name: str
    attempts: list[Attempt]
    settled: bool = False  # every item has its final answer or failure
    #: a finished day's piece: its answers are in the shards and its files pruned; the record of what was
    #: bought, never an input of a later run (which buys only the texts the output does not hold)
    history: bool = False

    @property
    def current(self) -> Attempt:
        return self.attempts[-1]

    def items_name(self, n: int) -> str:
        return f"{BATCH_DIR}/{self.name}/a{n}.items.parquet"

    def results_name(self, n: int) -> str:
        return f"{BATCH_DIR}/{self.name}/a{n}.results.parquet"

    def tag(self) -> str:
        """The metadata value naming this piece's current attempt and creation try."""
        a = self.current
        return f"{self.name}.a{a.n}.t{a.tries}"


class Ledger:
    """The ``_batch/`` objects of one output."""

    def __init__(self, store: OutputStore, tag: str, fingerprint: str, pieces: list[Piece]) -> None:
        self.store = store
        self.tag = tag  # sent as metadata ``batchembed_job``: which batches are this job's
        self.fingerprint = fingerprint
        self.pieces = pieces

    @classmethod
    def read(cls, store: OutputStore) -> Ledger | None:
        """The output's ledger as saved, or None when it has none."""
        raw = store.read_bytes(f"{BATCH_DIR}/job.json")
        if raw is None:
            return None
        job = orjson.loads(raw)
        pieces = []
        for name in sorted({n.split("/")[1] for n in store.list_names() if n.startswith(BATCH_DIR + "/p")}):
            state = store.read_bytes(f"{BATCH_DIR}/{name}/state.json")
            if state is None:
                continue  # its items were written, its state never: planned again by the next run
            doc = orjson.loads(state)
            attempts = [Attempt(**a) for a in doc["attempts"]]
            pieces.append(Piece(doc["name"], attempts, doc["settled"], bool(doc.get("history", False))))
        return cls(store, job["tag"], job["fingerprint"], pieces)

    @classmethod
    def open(cls, store: OutputStore, fingerprint: str) -> Ledger:
        """The ledger of this job (fingerprint), a new one if there is none or it was another job's."""
        ledger = cls.read(store)
        if ledger is not None and ledger.fingerprint == fingerprint:
            return ledger
        if ledger is not None:
            ledger.drop()
        ledger = cls(store, os.urandom(6).hex(), fingerprint, [])
        store.write_bytes(f"{BATCH_DIR}/job.json", orjson.dumps({"tag": ledger.tag, "fingerprint": fingerprint}))
        return ledger

    def drop(self) -> None:
        """Delete every ``_batch/`` object (a finished job, or another job's ledger)."""
        for name in self.store.list_names():
            if name.startswith(BATCH_DIR + "/"):
                self.store.delete(name)
        self.pieces = []

    def prune(self) -> None:
        """A complete job: its pieces become history (marked first, so a kill in between leaves no live
        piece without its files), then the items and results files go (the texts and answers are in the
        shards); the states stay, for ``status`` and the record of what was bought."""
        for piece in self.pieces:
            if not piece.history:
                piece.history = True
                self.save(piece)
        for name in self.store.list_names():
            if name.startswith(BATCH_DIR + "/") and name.endswith(".parquet"):
                self.store.delete(name)

    def live(self) -> list[Piece]:
        """The pieces of the current run of the job (not a finished day's history)."""
        return [p for p in self.pieces if not p.history]

    # --------------------------------------------------------------------------------- writing

    def add(self, items: pa.Table, lines: int, tokens: int) -> Piece:
        """A new piece of ``items`` (its attempt 0): items first, then its state (which makes it exist)."""
        piece = Piece(f"p{len(self.pieces):05d}", [Attempt(0, items.num_rows, lines, tokens)])
        self.store.write_table(piece.items_name(0), items)
        self.save(piece)
        self.pieces.append(piece)
        return piece

    def retry(self, piece: Piece, items: pa.Table, lines: int, tokens: int) -> None:
        """The piece's next attempt: the items its last attempt did not get answered."""
        n = piece.current.n + 1
        self.store.write_table(piece.items_name(n), items)
        piece.attempts.append(Attempt(n, items.num_rows, lines, tokens))
        self.save(piece)

    def save(self, piece: Piece) -> None:
        """The piece's state, whole or not at all."""
        doc = {
            "name": piece.name,
            "settled": piece.settled,
            "history": piece.history,
            "attempts": [asdict(a) for a in piece.attempts],
        }
        self.store.write_bytes(f"{BATCH_DIR}/{piece.name}/state.json", orjson.dumps(doc, option=orjson.OPT_INDENT_2))

    def write_results(self, piece: Piece, n: int, results: pa.Table) -> None:
        """Attempt ``n``'s results, streamed a row group of ``RESULT_ROWS`` at a time (a batch's answers are
        never encoded whole in memory) and visible only once complete."""
        writer = self.store.shard_writer(piece.results_name(n), results.schema, "snappy")
        try:
            for at in range(0, results.num_rows, RESULT_ROWS):
                writer.write(results.slice(at, RESULT_ROWS))
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def items(self, piece: Piece, n: int | None = None) -> pa.Table:
        """An attempt's items (default: the current one)."""
        return self.store.read_table(piece.items_name(piece.current.n if n is None else n))

    # -------------------------------------------------------------------------------- reading

    def enqueued_items(self) -> int:
        """Items the provider holds now (attempts being created or running)."""
        return sum(p.current.items for p in self.pieces if not p.settled and p.current.enqueued)

    def all_settled(self) -> bool:
        """Whether every piece has its final answers."""
        return all(p.settled for p in self.pieces)

    def totals(self) -> dict[str, Any]:
        """What was bought: batches created, items and tokens billed, item outcomes."""
        attempts = [a for p in self.pieces for a in p.attempts]
        return {
            "pieces": len(self.pieces),
            "batches_created": sum(1 for a in attempts if a.batch_id) + sum(len(a.refused) for a in attempts),
            "batches_refused_over_quota": sum(len(a.refused) for a in attempts),
            "resubmissions": sum(1 for a in attempts if a.n > 0),
            "items_planned": sum(p.attempts[0].items for p in self.pieces),
            "items_billed": sum(a.billed_items for a in attempts),
            "tokens_billed": sum(a.billed_tokens for a in attempts),
            "items_failed": sum(a.failed for a in attempts),
        }


def now() -> float:
    """Epoch seconds (what providers' ``created_at`` is compared with)."""
    return time.time()
