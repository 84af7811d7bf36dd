"""Where a user finds the rows whose text was cut before embedding.

Each committed shard with cut rows has ``_truncated/<shard>.parquet`` (written before the manifest
entry that records it, so a crash leaves nothing half-recorded), and ``_truncated.parquet`` gathers
them all at the end of every run: id, file, row, reason (``limits.input_tokens``, or the server's
"input too long" answer), tokens and characters before the cut, characters kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from batchembed.output.layout import TRUNCATED, TRUNCATED_DIR
from batchembed.output.manifest import Manifest

if TYPE_CHECKING:
    from batchembed.output.store.base import OutputStore


def write_truncated(store: OutputStore, shard_name: str, cuts: list[pa.Table]) -> int:
    """Write one shard's cut rows to ``_truncated/<shard>``; return how many there are."""
    if not cuts:
        return 0
    table = pa.concat_tables(cuts)
    store.write_table(f"{TRUNCATED_DIR}/{shard_name}", table)
    return table.num_rows


def rebuild_truncated(store: OutputStore, manifest: Manifest) -> None:
    """Gather every committed shard's cut rows into ``_truncated.parquet`` (removed when there are none)."""
    names = [f"{TRUNCATED_DIR}/{s.name}" for s in manifest.shards if s.truncated]
    if names:
        store.write_table(TRUNCATED, pa.concat_tables(store.read_table(n) for n in names))
    elif store.exists(TRUNCATED):
        store.delete(TRUNCATED)
