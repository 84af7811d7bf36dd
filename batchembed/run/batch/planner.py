"""The planning pass: the job's chunks through the task's own ``prepare``, new items cut into pieces.

Each chunk is prepared exactly as the online tier prepares it (texts, prefix, blank rows, token
counts, truncation, the cache's hits, per-chunk dedup), then every item its requests would send
that no piece holds yet joins the open piece; a piece is sealed (written to the ledger) once it
would exceed the provider's limits (inputs per batch, bytes per file, lines per file). Items
already in a piece — from an earlier chunk, or an earlier run of the job — are never planned
again, so a text is bought once however often it recurs and however often the job is run.

What each unit waits for (the pieces holding its items) is kept for the writing pass.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow.compute as pc

from batchembed.input.units import Chunk
from batchembed.run.batch.items import Items
from batchembed.run.batch.ledger import FAILED, Ledger

#: Bytes of JSON around each item and line in an input file (custom_id, method, url, model, quotes).
ITEM_OVERHEAD, LINE_OVERHEAD = 8, 200


class Planner:
    """Cuts the job's new items into pieces under ``max_inputs``/``max_bytes``/``max_lines``."""

    def __init__(self, ledger: Ledger, items: Items, *, max_inputs: int, max_bytes: int, max_lines: int) -> None:
        self.ledger = ledger
        self.items = items
        self.max_inputs = max_inputs
        self.max_bytes = max_bytes
        self.max_lines = max_lines
        self.where: dict[bytes, str] = {}  # item key -> the piece holding it
        self.waits: dict[str, set[str]] = {}  # unit name -> pieces it waits for
        self.failed: set[bytes] = set()  # items the batches failed for good: a retry unit buys them again
        self._open()

    def _open(self) -> None:
        self._keys: list[bytes] = []
        self._texts: list[str] = []
        self._queries: list[str | None] = []
        self._tokens: list[np.ndarray] = []
        self._groups: list[int] = []
        self._bytes = 0
        self._lines = 0

    def known(self) -> None:
        """Learn the items of the ledger's pieces (an earlier run's plan)."""
        for piece in self.ledger.live():
            if not self.ledger.store.exists(piece.items_name(0)):
                continue  # pruned by an earlier version without marking it history: its units are committed
            keys = self.ledger.store.read_table(piece.items_name(0), columns=["key"]).column("key").to_pylist()
            for key in keys:
                self.where[key] = piece.name
            for a in piece.attempts:
                name = piece.results_name(a.n)
                if a.failed and self.ledger.store.exists(name):
                    table = self.ledger.store.read_table(name, columns=["key", "status"])
                    failed = pc.equal(table.column("status"), FAILED)
                    self.failed.update(table.column("key").filter(failed).to_pylist())

    def plan(self, prepared: Iterable[tuple[Chunk, list]]) -> None:
        """Plan every prepared chunk's requests (``(chunk, requests)`` pairs), then seal the open piece."""
        for chunk, requests in prepared:
            unit = chunk.unit.name
            waits = self.waits.setdefault(unit, set())
            again = chunk.unit.kind == "retry"  # rows of _failed.parquet: what the batches failed is bought again
            for request in requests:
                keys, texts, query, tokens = self.items.of(request)
                if again and self.failed:
                    for k in keys:
                        if k in self.failed:
                            self.failed.discard(k)
                            del self.where[k]
                new = [i for i, k in enumerate(keys) if k not in self.where]
                for k in keys:
                    if k in self.where:
                        waits.add(self.where[k])
                while new:  # a request's items may straddle two pieces: pieces are filled to the limit
                    take = self._room(new, texts, query)
                    if not take:
                        self.seal()
                        continue
                    self._add(new[:take], keys, texts, query, np.asarray(tokens), waits)
                    new = new[take:]
        self.seal()

    def _room(self, new: list[int], texts: list[str], query: str | None) -> int:
        """How many of ``new`` fit in the open piece (at least one when it is empty)."""
        if self._lines + 1 > self.max_lines and self._keys:
            return 0
        room = self.max_inputs - len(self._keys)
        budget = self.max_bytes - self._bytes - LINE_OVERHEAD - len(query or "")
        take = 0
        for i in new[: max(room, 0)]:
            budget -= len(texts[i]) + ITEM_OVERHEAD
            if budget < 0:
                break
            take += 1
        return take if take or self._keys else 1

    def _add(self, new: list[int], keys, texts, query, tokens: np.ndarray, waits: set[str]) -> None:
        group = len(self._tokens)
        name = f"p{len(self.ledger.pieces):05d}"
        for i in new:
            self._keys.append(keys[i])
            self._texts.append(texts[i])
            self._queries.append(query)
            self._groups.append(group)
            self.where[keys[i]] = name
            self._bytes += len(texts[i]) + ITEM_OVERHEAD
        self._tokens.append(tokens[new])
        self._bytes += LINE_OVERHEAD + len(query or "")
        self._lines += 1
        waits.add(name)

    def seal(self) -> None:
        """Write the open piece to the ledger (nothing when it is empty)."""
        if not self._keys:
            return
        tokens = np.concatenate(self._tokens)
        groups = np.asarray(self._groups)
        lines = self.items.lines(tokens, groups)
        table = self.items.table(self._keys, self._texts, self._queries, tokens, lines)
        self.ledger.add(table, int(lines.max()) + 1, int(tokens.sum()))
        self._open()
