"""The output is its own cache: a text (a pair) whose answer some shard already holds is never bought again.

Every embed shard carries ``_text_key``: the 16-byte key of the exact text sent for each row (the
memo's key: blake2b of the final text; null for rows without a vector); every rerank shard written
since its introduction carries ``_pair_key``, the key of the exact (query, document) pair scored. A
refresh indexes the keys of the output's shards — the kept ones and the ones it is replacing — and
``prepare`` asks it for the texts the memo does not know, before any request. Rows reordered,
inserted or deleted around a text, its file rewritten unchanged, the row moved to another file: its
key is the same, so its answer is found. Shards without the key column (rerank outputs written
before it) are simply not indexed: their pairs are scored again. Nothing but the output is needed,
on a laptop or in a bucket.

The index is on disk (``key_index.KeyIndex``: a sorted file of keys and locations, a few megabytes
in memory at a hundred million rows), built at the first lookup from each shard's key column, read
one shard at a time. A lookup finds the keys' locations, then reads each row group holding hits once
and copies the answers out (the last few row groups stay decoded: a changed file's hits often come
from the same old shard).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchembed.errors import OutputError
from batchembed.output.key_index import MISSING, KeyIndex

if TYPE_CHECKING:
    from batchembed.output.manifest import ShardRecord
    from batchembed.output.store.base import OutputStore

#: The embed shards' column of text keys.
KEY_COLUMN = "_text_key"
#: The rerank shards' column of (query, document) pair keys.
PAIR_KEY_COLUMN = "_pair_key"
#: Where a key lives: its shard's number in the high bits, its row in the low ``ROW_BITS``.
ROW_BITS = 40
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
    """Answers (vectors or scores) by key, read from the output's own shards."""

    def __init__(
        self, store: OutputStore, shards: Sequence[ShardRecord], column: str, key_column: str = KEY_COLUMN
    ) -> None:
        """``column``: the shards' answer column (the vector column, or rerank's ``score``);
        ``key_column``: their key column. Nothing is read until the first ``lookup``."""
        self.store = store
        self.column = column
        self.key_column = key_column
        self.shards = list(shards)
        #: the tokens billed per token this job's tokenizer counts, over the shards that know both: what a
        #: reused text carries is its count times this (1.0 when no shard knows)
        counted = sum(s.counted for s in self.shards if getattr(s, "counted", 0))
        paid = sum(s.tokens + s.reused_tokens for s in self.shards if getattr(s, "counted", 0))
        self.ratio = paid / counted if counted and paid else 1.0
        self.names: list[str] = []
        self.hits = 0
        self._lock = threading.Lock()
        self._groups: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._group_starts: list[np.ndarray] = []
        self._index: KeyIndex | None = None

    def _build(self) -> KeyIndex:
        """Index every shard's keys, one shard in memory at a time."""
        index = KeyIndex(sum(int(getattr(s, "rows", 0) or 0) for s in self.shards))
        for shard in self.shards:
            try:
                pf = self.store.parquet_file(shard.name)
                if self.key_column not in pf.schema_arrow.names:
                    continue
                keys = _fixed_keys(pf.read(columns=[self.key_column]).column(0).combine_chunks())
            except UNREADABLE:  # gone (compacted by others then vacuumed, or replaced) or damaged: bought again
                continue
            present = np.flatnonzero(keys.is_valid().to_numpy(zero_copy_only=False))
            if not len(present):
                continue
            raw = np.frombuffer(keys.buffers()[1], dtype=np.uint64, count=2 * (keys.offset + len(keys)))
            raw = raw.reshape(-1, 2)[keys.offset :][present]
            number = len(self.names)
            self.names.append(shard.name)
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
            self._group_starts.append(np.cumsum([0, *sizes]))
            index.add(raw, (np.uint64(number) << np.uint64(ROW_BITS)) | present.astype(np.uint64))
        index.finish()
        return index

    def __len__(self) -> int:
        return self._ready().rows

    def _ready(self) -> KeyIndex:
        with self._lock:
            if self._index is None:
                self._index = self._build()
            return self._index

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The answers the output holds for ``keys`` (16-byte keys): copies, not views of what was read."""
        if not len(keys) or not self.shards:
            return {}
        index = self._ready()
        wanted = np.frombuffer(b"".join(keys), dtype=np.uint64).reshape(-1, 2)
        at = index.find(wanted)
        hits = np.flatnonzero(at != MISSING)
        found: dict[bytes, np.ndarray] = {}
        if not len(hits):
            return found
        shard = (at[hits] >> np.uint64(ROW_BITS)).astype(np.int64)
        row = (at[hits] & np.uint64((1 << ROW_BITS) - 1)).astype(np.int64)
        with self._lock:
            for s in np.unique(shard):
                mine = np.flatnonzero(shard == s)
                starts = self._group_starts[int(s)]
                groups = np.searchsorted(starts, row[mine], side="right") - 1
                for g in np.unique(groups):
                    these = mine[groups == g]
                    block = self._block(int(s), int(g))
                    if block is None:
                        continue
                    answers = block[row[these] - int(starts[g])]  # a copy: the block is not kept alive
                    finite = np.isfinite(answers).reshape(len(these), -1).all(axis=1)
                    for i, answer, ok in zip(these, answers, finite, strict=True):
                        if ok:
                            found[keys[int(hits[i])]] = answer
            self.hits += len(found)
        return found

    def _block(self, shard: int, group: int) -> np.ndarray | None:
        """The answer column of one row group as numpy (vectors: one row each), the last few kept."""
        block = self._groups.get((shard, group))
        if block is not None:
            self._groups.move_to_end((shard, group))
            return block
        try:
            pf = self.store.parquet_file(self.names[shard])
            block = _answer_block(pf.read_row_group(group, columns=[self.column]).column(0).combine_chunks())
        except UNREADABLE:  # a replaced shard deleted since the index was built: its texts are bought
            return None
        self._groups[(shard, group)] = block
        while len(self._groups) > CACHED_GROUPS:
            self._groups.popitem(last=False)
        return block

    def close(self) -> None:
        """Drop the index's files."""
        if self._index is not None:
            self._index.close()


def _fixed_keys(keys: pa.Array) -> pa.Array:
    """Keys as ``fixed_size_binary(16)`` (a file another writer compacted holds them as ``binary``)."""
    if pa.types.is_fixed_size_binary(keys.type):
        return keys
    return keys.cast(pa.binary(16))


def _answer_block(col: pa.Array) -> np.ndarray:
    """A row group's answers as numpy: vectors an (n, dim) float32 matrix, scores (rerank) a vector; a null
    answer is NaN, never a hit (a file another writer compacted holds vectors as variable lists, a null
    one without slots)."""
    if pa.types.is_fixed_size_list(col.type):
        dim = col.type.list_size
        return col.values.to_numpy(zero_copy_only=False)[col.offset * dim :][: len(col) * dim].reshape(-1, dim)
    if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
        return col.to_numpy(zero_copy_only=False).astype(np.float32)
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    dim = int(lengths.max()) if len(lengths) else 0
    block = np.full((len(col), dim), np.nan, dtype=np.float32)
    full = lengths == dim
    if dim and full.any():
        values = pc.list_flatten(col.filter(pa.array(full))).to_numpy(zero_copy_only=False)
        block[full] = values.reshape(-1, dim).astype(np.float32)
    return block
