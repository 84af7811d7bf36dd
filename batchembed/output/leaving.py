"""How many of the output's ids a refresh takes away: what the removal guard (``output.max_removed``) counts.

A changed file is compared by its rows, not counted as removed: the ids of the retired shards that hold
a changed or removed file are looked for among the ids of every file the refresh reads. With
``input.id`` those are the id column's values (compared by their text form, 64-bit hashes); without it a
row's id is ``file:row``, so an id stays exactly when its file still has that row. The guard asks only
when the retired shards could hold more than it allows: this reads the files the refresh reads once more
(their id column, or their row count), before anything is bought or written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from batchembed.input.read import columns_of, iter_batches
from batchembed.output.input_diff import guard_removal

if TYPE_CHECKING:
    from batchembed.input.files import SourceFile
    from batchembed.output.input_diff import InputDiff
    from batchembed.output.manifest import Manifest
    from batchembed.output.store.base import OutputStore


def _text(ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    return ids if pa.types.is_string(ids.type) else pc.cast(ids, pa.string())


def _digests(ids: pa.Array) -> np.ndarray:
    return pl.Series(ids).hash(seed=0).to_numpy()


def _shard_ids(store: OutputStore, name: str) -> pa.Array:
    """A shard's ids (its first column), as text."""
    first = store.parquet_file(name).schema_arrow.names[0]
    return _text(store.read_table(name, columns=[first]).column(0))


def count_rows(src: SourceFile) -> int:
    """The file's records (rows), read once (a Parquet file's from its footer)."""
    if src.rows is not None:
        return src.rows
    names = columns_of(src)
    if not names:
        return 0
    return sum(batch.num_rows for batch in iter_batches(src, names[:1], 0))


def ids_leaving(store: OutputStore, manifest: Manifest, diff: InputDiff, reading: list[SourceFile]) -> int:
    """Ids of the stale shards holding a changed or removed file that none of ``reading`` holds now."""
    gone = set(diff.changed) | set(diff.removed)
    at_risk = [s for s in diff.stale if gone & set(s.inputs) and s.rows]
    if not at_risk:
        return 0
    old = pa.concat_arrays([_shard_ids(store, s.name) for s in at_risk])
    column = manifest.fingerprint.get("input.id")
    if column:
        found = [np.zeros(0, np.uint64)]
        for src in reading:
            start = src.tail[0] if src.tail else 0
            found += [_digests(_text(b.column(0))) for b in iter_batches(src, [column], start, 65_536)]
        return int((~np.isin(_digests(old), np.concatenate(found))).sum())
    parts = pl.Series(old).str.extract_groups(r"^(.*):(\d+)$")
    names, rows = parts.struct.field("1").to_list(), parts.struct.field("2").cast(pl.Int64).to_numpy()
    wanted = set(names)
    now = {src.name: count_rows(src) for src in reading if src.name in wanted}
    limit = np.array([now.get(name, 0) for name in names], dtype=np.int64)
    return int((rows >= limit).sum())


def guard_leaving(
    store: OutputStore, manifest: Manifest, diff: InputDiff, reading: list[SourceFile], max_removed: float
) -> None:
    """The removal guard (``input_diff.guard_removal``) over ``manifest``'s rows, counting the ids that leave
    (``ids_leaving``: only when the stale shards could hold more than the limit)."""
    guard_removal(manifest, diff, max_removed, str(store.uri), lambda: ids_leaving(store, manifest, diff, reading))
