"""The batches' answers handed to the ordinary writing pipeline, as if they were a journal.

The writing pass is the online tier's own pipeline (``pipeline.Pipeline``: prepare, resume, ordered
writer, commit): the task's journal codec already knows how to fill a prepared piece from answers
found elsewhere (``JournalCodec.resume`` with a ``journal.Recovered``), so the batch results are
given to it in that form. What comes out of ``resume`` is what the batches did not answer: the
items that failed go into the piece's errors (``_failed.parquet``), the ones handed to the online
tier (``batch_fallback = "online"``) stay as requests and are sent like any other.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchembed.output.journal.recovery import Recovered
from batchembed.output.journal.writer import Resumed
from batchembed.run.batch.items import Items
from batchembed.run.batch.ledger import COLLECTED, FAILED, OK, ONLINE, Ledger
from batchembed.tasks import Piece, Request

#: Row groups of results files kept in memory at once (``ledger.RESULT_ROWS`` answers each; the writing pass
#: asks for them in planned order, so a group is read once): the answers are never read a whole file at a time.
CACHED_GROUPS = 8


class BatchResults:
    """Every collected item's final status, and its answer read from its results file's row group on demand."""

    def __init__(self, ledger: Ledger, items: Items) -> None:
        self.ledger = ledger
        self.items = items
        self.files: list[str] = []
        self.where: dict[bytes, tuple[int, int]] = {}  # key -> (file, row) of its last answer
        self.status: dict[bytes, str] = {}
        self.errors: dict[bytes, str] = {}
        self._starts: list[np.ndarray] = []  # per file: the first row of each row group (and its row count)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._open: tuple[int, pq.ParquetFile] | None = None  # the results file read last
        self.groups_read = 0  # row groups read (a results file is never read whole)
        self.dim: int | None = None  # the answers' vector size (embed), from the first file with an answer
        self.charged: set[bytes] = set()  # keys whose tokens a unit's shard already counts (this run)
        billed = planned = 0
        for piece in ledger.live():  # a finished day's answers are in the shards: history, never read again
            for a in piece.attempts:
                if a.step == COLLECTED and ledger.store.exists(piece.results_name(a.n)):
                    self._index(piece.results_name(a.n))
                    if a.billed_tokens and a.ok:
                        billed, planned = billed + a.billed_tokens, planned + a.tokens * a.ok // max(a.items, 1)
        #: tokens the provider billed per token this job's tokenizer counted (what a unit's shard is charged)
        self.ratio = billed / planned if billed and planned else 1.0

    def _index(self, name: str) -> None:
        table = self.ledger.store.read_table(name, columns=["key", "status", "error"])
        meta = self.ledger.store.parquet_file(name).metadata
        kind = meta.schema.to_arrow_schema().field(self.items.column).type
        if self.dim is None and pa.types.is_fixed_size_list(kind) and OK in table.column("status").to_pylist():
            self.dim = kind.list_size
        at = len(self.files)
        self.files.append(name)
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._starts.append(np.cumsum([0, *sizes]))
        keys = table.column("key").to_pylist()
        for row, (key, status, error) in enumerate(
            zip(keys, table.column("status").to_pylist(), table.column("error").to_pylist(), strict=True)
        ):
            self.status[key] = status  # a later attempt's word replaces an earlier "retry"
            if status == OK:
                self.where[key] = (at, row)
            elif status == FAILED:
                self.errors[key] = f"batch: {error}"

    def answer(self, at: int, row: int) -> np.ndarray:
        """The answer in ``row`` of results file ``at``, from its row group (a few groups are kept)."""
        starts = self._starts[at]
        group = int(np.searchsorted(starts, row, side="right")) - 1
        values = self._cache.get((at, group))
        if values is None:
            if self._open is None or self._open[0] != at:
                self._open = (at, self.ledger.store.parquet_file(self.files[at]))
            values = self.items.answers_of(self._open[1].read_row_group(group, columns=[self.items.column]))
            self.groups_read += 1
            self._cache[(at, group)] = values
            if len(self._cache) > CACHED_GROUPS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end((at, group))
        return values[row - int(starts[group])]

    def recovered(self, keys: list[bytes]) -> HeldAnswers | None:
        """The answers of ``keys`` that the batches hold, as a journal would give them."""
        found = [(k, self.where[k]) for k in keys if k in self.where]
        if not found:
            return None
        rows = [self.answer(f, r) for _, (f, r) in found]
        return HeldAnswers([k for k, _ in found], {self.items.column: np.stack(rows)})


class HeldAnswers:
    """Answers held in memory, read the way a journal's ``Recovered`` is (``find``, ``take``)."""

    def __init__(self, keys: list[bytes], columns: dict[str, np.ndarray]) -> None:
        self.keys = keys
        self.columns = columns
        self.sent: set[bytes] = set()
        self.rows = 0
        self.tokens = 0
        self.cuts: dict[bytes, tuple] = {}
        self._index = {k: i for i, k in enumerate(keys)}

    def find(self, keys: list[bytes]) -> np.ndarray:
        """Position of each key's answer, -1 where there is none."""
        index = self._index
        return np.fromiter((index.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))

    def take(self, column: str, positions: np.ndarray) -> np.ndarray:
        """The answers at ``positions`` of an answer column."""
        return self.columns[column][np.asarray(positions, dtype=np.int64)]

    def values(self, column: str) -> np.ndarray:
        """A whole answer column."""
        return self.columns[column]

    def close(self) -> None:
        """Nothing to release."""


class MergedAnswers:
    """A unit's journal (``Recovered``) and the batches' answers read as one; the journal's first."""

    def __init__(self, journal: Recovered, batches: HeldAnswers) -> None:
        self.journal, self.batches = journal, batches
        self.keys = journal.keys + batches.keys
        self.sent, self.rows, self.tokens, self.cuts = journal.sent, journal.rows, journal.tokens, journal.cuts
        self._split = len(journal.keys)

    def find(self, keys: list[bytes]) -> np.ndarray:
        """Position of each key's answer (the journal's if it has one), -1 where there is none."""
        mine = self.journal.find(keys)
        theirs = self.batches.find(keys)
        return np.where(mine >= 0, mine, np.where(theirs >= 0, theirs + self._split, -1))

    def take(self, column: str, positions: np.ndarray) -> np.ndarray:
        """The answers at ``positions``, read from the journal or the batches."""
        positions = np.asarray(positions, dtype=np.int64)
        first = positions < self._split
        a = self.journal.take(column, positions[first]) if first.any() else None
        b = self.batches.take(column, positions[~first] - self._split) if (~first).any() else None
        sample = a if a is not None else b
        if sample is None:
            return np.zeros(0, dtype=np.float32)
        out = np.empty((len(positions), *sample.shape[1:]), dtype=sample.dtype)
        if a is not None:
            out[first] = a
        if b is not None:
            out[~first] = b
        return out

    def values(self, column: str) -> np.ndarray:
        """A whole answer column."""
        return self.take(column, np.arange(len(self.keys)))

    def close(self) -> None:
        """Release the journal's segments."""
        self.journal.close()


def merge(a: Recovered | None, b: HeldAnswers | None) -> Any:
    """Two sets of answers as one (the unit's journal and the batches)."""
    if a is None or b is None:
        return b if a is None else a
    return MergedAnswers(a, b)


class BatchCodec:
    """The task's journal codec with the batches' answers folded into ``resume``."""

    def __init__(self, inner: Any, results: BatchResults, items: Items, counts: dict[str, int]) -> None:
        self.inner = inner
        self.results = results
        self.items = items
        self.counts = counts  # rows answered by batches / failed in them / sent online (for the report)

    def bind(self, journal: Any) -> None:
        self.inner.bind(journal)

    def keys(self, request: Request) -> pa.Array:
        return self.inner.keys(request)

    def answers(self, request: Request) -> list[tuple[str, pa.RecordBatch, int]]:
        return self.inner.answers(request)

    def _tokens(self, requests: list[Request], per_request: list[list[bytes]]) -> int:
        """What the batches' answers of these requests cost, for the unit's shard (each text once a run: a
        text recurring in another unit was bought once), at the request's token count."""
        charged = self.results.charged
        total = 0
        for request, keys in zip(requests, per_request, strict=True):
            new = [k for k in dict.fromkeys(keys) if k in self.results.where and k not in charged]
            charged.update(new)
            if keys:
                total += request.tokens * len(new) / len(keys)
        return round(total * self.results.ratio)

    def resume(self, piece: Piece, requests: list[Request], recovered: Any) -> Resumed:
        """Fill the piece from the batches (and the unit's journal), fail what the batches failed."""
        per_request = [self.inner.keys(r).to_pylist() for r in requests]
        keys = [k for ks in per_request for k in ks]
        from_batches = self.results.recovered(keys)
        resumed = self.inner.resume(piece, requests, merge(recovered, from_batches))
        status = self.results.status
        answered = [
            r.items[np.fromiter((k in self.results.where for k in ks), bool, len(ks))]
            for r, ks in zip(requests, per_request, strict=True)
        ]
        batch_rows = self.items.rows(piece, np.concatenate(answered)) if answered else 0
        self.counts["rows_from_batches"] += batch_rows
        piece.chunk.unit.tokens += self._tokens(requests, per_request)
        left = []
        for request in resumed.requests:
            ks = self.inner.keys(request).to_pylist()
            keep = np.ones(len(ks), dtype=bool)
            for at, key in enumerate(ks):
                state = status.get(key)
                if state == ONLINE:
                    continue
                keep[at] = False
                item = int(request.items[at])
                piece.errors[item] = self.results.errors.get(key) or "batch: no answer for this input"
            self.counts["rows_failed_in_batches"] += self.items.rows(piece, request.items[~keep])
            if keep.all():
                left.append(request)
            elif keep.any():
                share = max(1, request.tokens * int(keep.sum()) // len(ks))
                left.append(Request(piece, request.items[keep], share))
        self.counts["rows_sent_online"] += sum(self.items.rows(piece, r.items) for r in left)
        return Resumed(left, max(0, resumed.rows_recovered - batch_rows), resumed.rows_resent, resumed.held)
