"""The output is its own cache: a text whose vector some shard already holds is never bought again.

Every embed shard carries ``_text_key``: the 16-byte key of the exact text sent for each row (the
memo's key: blake2b of the final text; null for rows without a vector). A refresh builds an index
over the keys of the output's shards — the kept ones and the ones it is replacing — and ``prepare``
asks it for the texts the memo does not know, before any request. Rows reordered, inserted or
deleted around a text, its file rewritten unchanged, the row moved to another file: its key is the
same, so its vector is found. Nothing but the output is needed, on a laptop or in a bucket.

The index holds the keys sorted by their first 8 bytes (plus where each lives); a lookup is one
``searchsorted`` per batch of keys, a full 16-byte comparison, then one read of the row groups that
hold the hits (the last few kept, since a changed file's hits come in the order of its old shard).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from batchembed.errors import OutputError

if TYPE_CHECKING:
    from batchembed.output.manifest import ShardRecord
    from batchembed.output.store.base import OutputStore

#: The shards' column of text keys.
KEY_COLUMN = "_text_key"
#: Row groups of vectors kept decoded between lookups.
CACHED_GROUPS = 8
#: What reading a shard that is gone or damaged raises (a cache only saves buying: it never fails a run).
UNREADABLE = (OSError, pa.ArrowException, OutputError)


def key_column(keys: np.ndarray, rows: np.ndarray, valid: np.ndarray) -> pa.Array:
    """The ``_text_key`` of each output row: ``keys[rows[i]]`` where ``valid``, else null."""
    if not len(keys):
        return pa.nulls(len(rows), pa.binary(16))
    raw = np.frombuffer(b"".join(keys), dtype="S16")
    picked = raw[np.where(valid, rows, 0)]
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16),
        len(rows),
        [pa.array(valid).buffers()[1] if not valid.all() else None, pa.py_buffer(picked.tobytes())],
    )


class OutputCache:
    """Vectors by text key, read from the output's own shards."""

    def __init__(self, store: OutputStore, shards: Sequence[ShardRecord], column: str) -> None:
        self.store = store
        self.column = column
        #: the tokens billed per token this job's tokenizer counts, over the shards that know both: what a
        #: reused text carries is its count times this (1.0 when no shard knows)
        counted = sum(s.counted for s in shards if s.counted)
        paid = sum(s.tokens + s.reused_tokens for s in shards if s.counted)
        self.ratio = paid / counted if counted and paid else 1.0
        self.names: list[str] = []
        self.hits = 0
        self._lock = threading.Lock()
        self._groups: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._group_starts: dict[int, np.ndarray] = {}
        prefixes, fulls, where_shard, where_row = [], [], [], []
        for shard in shards:
            try:
                pf = store.parquet_file(shard.name)
                if KEY_COLUMN not in pf.schema_arrow.names:
                    continue
                keys = pf.read(columns=[KEY_COLUMN]).column(0).combine_chunks()
            except UNREADABLE:  # gone or damaged: its texts are bought again (what is committed is checked elsewhere)
                continue
            present = np.flatnonzero(keys.is_valid().to_numpy(zero_copy_only=False))
            if not len(present):
                continue
            raw = np.frombuffer(keys.buffers()[1], dtype=np.uint64, count=2 * len(keys)).reshape(-1, 2)[present]
            index = len(self.names)
            self.names.append(shard.name)
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
            self._group_starts[index] = np.cumsum([0, *sizes])
            prefixes.append(raw[:, 0])
            fulls.append(raw[:, 1])
            where_shard.append(np.full(len(present), index, dtype=np.int32))
            where_row.append(present.astype(np.int64))
        if prefixes:
            prefix = np.concatenate(prefixes)
            order = np.argsort(prefix, kind="stable")
            self._prefix = prefix[order]
            self._rest = np.concatenate(fulls)[order]
            self._shard = np.concatenate(where_shard)[order]
            self._row = np.concatenate(where_row)[order]
        else:
            self._prefix = self._rest = np.zeros(0, np.uint64)
            self._shard = np.zeros(0, np.int32)
            self._row = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self._prefix)

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The vectors the output holds for ``keys`` (16-byte text keys)."""
        if not len(keys) or not len(self._prefix):
            return {}
        wanted = np.frombuffer(b"".join(keys), dtype=np.uint64).reshape(-1, 2)
        at = np.searchsorted(self._prefix, wanted[:, 0])
        at_ok = np.minimum(at, len(self._prefix) - 1)
        match = (at < len(self._prefix)) & (self._prefix[at_ok] == wanted[:, 0]) & (self._rest[at_ok] == wanted[:, 1])
        found: dict[bytes, np.ndarray] = {}
        hits = np.flatnonzero(match)
        if not len(hits):
            return found
        with self._lock:
            for i in hits:
                j = at_ok[i]
                vector = self._vector(int(self._shard[j]), int(self._row[j]))
                if vector is not None:
                    found[keys[int(i)]] = vector
            self.hits += len(found)
        return found

    def _vector(self, shard: int, row: int) -> np.ndarray | None:
        starts = self._group_starts[shard]
        group = int(np.searchsorted(starts, row, side="right")) - 1
        block = self._groups.get((shard, group))
        if block is None:
            try:
                pf = self.store.parquet_file(self.names[shard])
                col = pf.read_row_group(group, columns=[self.column]).column(0).combine_chunks()
            except UNREADABLE:  # a replaced shard deleted since the index was built: the text is bought
                return None
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            dim = col.type.list_size
            block = col.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
            self._groups[(shard, group)] = block
            while len(self._groups) > CACHED_GROUPS:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end((shard, group))
        vector = block[row - int(starts[group])]
        return vector if np.isfinite(vector).all() else None
