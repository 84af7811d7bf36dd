"""Where a user finds the rows whose text was cut before embedding.

Each committed shard with cut rows has ``_truncated/<shard>.parquet`` (written before the manifest
entry that records it, so a crash leaves nothing half-recorded), and ``_truncated.parquet`` gathers
them all at the end of every run: id, file, row, reason (``limits.input_tokens``, or the server's
"input too long" answer), tokens and characters before the cut, characters kept.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchembed.checkpoint import TRUNCATED, TRUNCATED_DIR, Manifest
from batchembed.writer import write_table_atomically


def write_truncated(out: Path, shard_name: str, cuts: list[pa.Table]) -> int:
    """Write one shard's cut rows to ``_truncated/<shard>``; return how many there are."""
    if not cuts:
        return 0
    table = pa.concat_tables(cuts)
    (out / TRUNCATED_DIR).mkdir(exist_ok=True)
    write_table_atomically(out / TRUNCATED_DIR, shard_name, table)
    return table.num_rows


def rebuild_truncated(out: Path, manifest: Manifest) -> None:
    """Gather every committed shard's cut rows into ``_truncated.parquet`` (removed when there are none)."""
    files = [out / TRUNCATED_DIR / s.name for s in manifest.shards if s.truncated]
    if files:
        write_table_atomically(out, TRUNCATED, pa.concat_tables(pq.read_table(f) for f in files))
    else:
        (out / TRUNCATED).unlink(missing_ok=True)
